"""The Lua scripts and the keys they are given: headers, key counts, one slot per call."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from clusterlayer import keys
from clusterlayer.scripts import CLAIM_PENDING, DELIVER_INBOX, LUA_DIR, SEND_CHANNEL, Script

SCRIPTS = sorted(LUA_DIR.glob("*.lua"))


def test_every_script_is_loaded_by_the_module() -> None:
    loaded = {CLAIM_PENDING.name, DELIVER_INBOX.name, SEND_CHANNEL.name}
    assert {path.name for path in SCRIPTS} == loaded


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_header_lists_keys_args_and_return_codes(path: object) -> None:
    script = Script.load(path.name)  # type: ignore[attr-defined]
    header = script.source.split("]]", 1)[0]
    assert re.match(r"--\[\[\n[a-z_]+: ", script.source), "header starts with the script's name"
    listed = [int(n) for n in re.findall(r"^KEYS\[(\d+)\]", header, re.MULTILINE)]
    assert listed == list(range(1, script.numkeys + 1)), "KEYS in the header match the filename"
    assert re.search(r"^ARGV\[1\]", header, re.MULTILINE)
    assert "Returns" in header
    used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", script.source.split("]]", 1)[1])}
    assert used == set(range(1, script.numkeys + 1)), "the body uses exactly the declared keys"
    assert "..'" not in script.source and '.."' not in script.source, "no key names built in Lua"


def test_the_keys_of_one_process_share_a_slot() -> None:
    for process in ("0123456789abcdef", "ffffffffffffffff", "a"):
        slots = {
            key_slot(key.encode())
            for key in (
                keys.inbox("asgi", process),
                keys.alive("asgi", process),
                keys.full("asgi", process),
            )
        }
        assert len(slots) == 1


def test_the_keys_of_one_channel_share_a_slot() -> None:
    for channel in ("chat.room-1", "a", "test.work"):
        stream = keys.channel_stream("asgi", channel)
        assert key_slot(stream.encode()) == key_slot(keys.dead_letters("asgi", channel).encode())


def test_keys_are_tagged_by_their_owner() -> None:
    assert keys.inbox("asgi", "p1") == "asgi:{p:p1}:inbox"
    assert keys.channel_stream("asgi", "chat.room-1") == "asgi:{c:chat.room-1}:stream"
    assert keys.group("asgi", "room.1") == "asgi:{g:room.1}:members"
    # Different owners spread over the cluster rather than sharing one slot.
    slots = {key_slot(keys.group("asgi", f"room.{n}").encode()) for n in range(50)}
    assert len(slots) > 40
