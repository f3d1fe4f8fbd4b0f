"""The layer's Lua scripts: one atomic step per ``lua/<verb>_<noun>-<numkeys>.lua`` file.

Each script is loaded once per primary (SCRIPT LOAD goes to every primary) and run with
EVALSHA; a primary that lost its script cache (restart, failover) answers NOSCRIPT, and the
script is loaded again and the call repeated, which is safe because NOSCRIPT means nothing ran.
The typed wrappers below are the only callers, and the status codes they return are defined
once, here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).resolve().parent / "lua"


@dataclass(frozen=True)
class Script:
    name: str
    numkeys: int
    source: str
    sha: str

    @classmethod
    def load(cls, filename: str) -> Script:
        source = (LUA_DIR / filename).read_text()
        numkeys = int(filename.removesuffix(".lua").rsplit("-", 1)[1])
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        return cls(name=filename, numkeys=numkeys, source=source, sha=sha)

    async def run(self, client: RedisCluster, keys: list[str], args: list[Any]) -> Any:
        if len(keys) != self.numkeys:
            raise ValueError(f"{self.name} takes {self.numkeys} keys, got {len(keys)}")
        try:
            return await client.evalsha(self.sha, self.numkeys, *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, self.numkeys, *keys, *args)


CLAIM_PENDING = Script.load("claim_pending-2.lua")
DELIVER_INBOX = Script.load("deliver_inbox-3.lua")
SEND_CHANNEL = Script.load("send_channel-1.lua")


class Delivery(IntEnum):
    """What became of one message handed to a script (the scripts' return codes)."""

    QUEUED = 0
    FULL = 1  # the channel (or the whole inbox of a process-local channel) is at capacity
    GONE = 2  # the process owning the process-local channel no longer heartbeats
    CHANNEL_FULL = 3  # every addressed process-local channel is at capacity


@dataclass(frozen=True)
class InboxEntry:
    """One message for one or more process-local channels of the same process."""

    channels: list[str]
    payload: bytes


async def deliver_inbox(
    client: RedisCluster,
    *,
    inbox: str,
    alive: str,
    full: str,
    entries: list[InboxEntry],
    maxlen: int,
    capacity: int,
    expiry_ms: int,
) -> list[Delivery]:
    """Append ``entries`` to a process's inbox if it is alive, one result per entry."""
    args: list[Any] = [maxlen, capacity, expiry_ms, len(entries)]
    for entry in entries:
        args.append(len(entry.channels))
        args.extend(entry.channels)
        args.append(entry.payload)
    codes = await DELIVER_INBOX.run(client, [inbox, alive, full], args)
    return [Delivery(int(code)) for code in codes]


async def send_channel(
    client: RedisCluster,
    *,
    stream: str,
    payloads: list[bytes],
    maxlen: int,
    capacity: int,
    expiry_ms: int,
) -> list[Delivery]:
    """Append ``payloads`` to a normal channel's stream within its capacity."""
    codes = await SEND_CHANNEL.run(client, [stream], [maxlen, capacity, expiry_ms, *payloads])
    return [Delivery(int(code)) for code in codes]


@dataclass(frozen=True)
class Claimed:
    """What one ``claim_pending`` call took over."""

    dead: int  # entries dropped as dead letters
    entries: list[tuple[bytes, dict[bytes, bytes]]]  # to deliver: (id, fields)


async def claim_pending(
    client: RedisCluster,
    *,
    stream: str,
    dead_letters: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    count: int,
    max_deliveries: int,
    ttl_ms: int,
) -> Claimed:
    """Claim for ``consumer`` the entries of ``stream`` pending longer than ``min_idle_ms``."""
    args = [group, consumer, min_idle_ms, count, max_deliveries, ttl_ms]
    dead, claimed = await CLAIM_PENDING.run(client, [stream, dead_letters], args)
    entries = []
    for entry_id, flat in claimed:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        entries.append((bytes(entry_id), fields))
    return Claimed(dead=int(dead), entries=entries)
