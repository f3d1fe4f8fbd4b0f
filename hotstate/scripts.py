"""The loader: every ``hotstate/lua/<entity>_<verb>-<numkeys>.lua`` read, checked and run here.

Each file is one atomic commit. Its header (the leading ``--`` comment block) names the script,
lists each ``KEYS[i]`` and ``ARGV[i]`` and every ``RETURN {CODE, ...}``. At import, every file is
parsed and checked, so a malformed script stops the process before it serves anything:

1. the file name is ``<entity>_<verb>-<numkeys>.lua`` (the name of the wrapper that calls it, so
   one grep finds both) and the header's first line names the script;
2. the header declares ``KEYS[1..numkeys]`` exactly, ``ARGV[1..n]`` in order (the last one may be
   variadic, ``ARGV[n..]``) and at least one return code;
3. the body uses only declared KEYS and ARGV, returns only declared codes and every declared code,
   and passes every key it touches as ``KEYS[i]`` (no key names built in Lua).

Calls go through EVALSHA. redis-py's cluster client routes EVALSHA by its keys, so the script
runs on the primary that owns their (shared) slot, and refuses keys of different slots before
sending. Script caches are per server and a newly promoted replica starts empty, so a NOSCRIPT
answer loads the script on the primary that owns the slot (SCRIPT LOAD, which the server never
evicts) and retries, so each script's first call on a primary costs one more round trip. Every
call is bounded by ``REDIS_SOCKET_TIMEOUT`` and raises ``DependencyDown`` when the cluster
cannot answer; the commit may or may not have happened then, and every script is safe to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import re
import weakref
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from hotstate.client import get_client
from hotstate.codes import Code, Reply, decode
from hotstate.errors import UNAVAILABLE_ERRORS, DependencyDown, dependency_guard

logger = logging.getLogger(__name__)

LUA_DIR = Path(__file__).resolve().parent / "lua"
NOSCRIPT_RETRIES = 3

_FILENAME = re.compile(r"^(?P<name>[a-z]+(?:_[a-z]+)+)-(?P<numkeys>[1-9][0-9]*)\.lua$")
_TITLE = re.compile(r"^-- (?P<name>[a-z]+(?:_[a-z]+)+): \S")
_KEY = re.compile(r"^-- KEYS\[(?P<index>\d+)\] +(?P<name>[a-z_]+)\b")
_ARG = re.compile(r"^-- ARGV\[(?P<index>\d+)(?P<variadic>\.\.)?\] +(?P<name>[a-z_]+)\b")
_RETURN = re.compile(r"^-- RETURN \{(?P<code>[A-Z_]+)\b")
_BODY_KEY = re.compile(r"\bKEYS\[(\d+)\]")
_BODY_ARG = re.compile(r"\bARGV\[(\d+)\]")
# A code is returned as the first element of a table, or assigned to a variable returned later.
_BODY_CODE = re.compile(r"\{'([A-Z_]+)'|\b[a-z_]+ = '([A-Z][A-Z_]*)'")
_BODY_CALL = re.compile(r"redis\.call\('(?P<command>[A-Z]+)'(?:,\s*(?P<first>[^,)]+))?")
_KEYLESS_COMMANDS = {"TIME"}


# redis-py's asyncio cluster client refuses (MaxConnectionsError, a ConnectionError) a command
# once a node's pool holds max_connections, instead of waiting. A burst of calls from one
# process would then look like an outage. Calls wait for a permit here instead, inside their
# time bound. The permits are per node, so that a primary that stalls (CLIENT PAUSE, a failover)
# holds up the calls to it and no others: a per-client count would fill with the stalled calls
# and stop every call to the healthy primaries too. Calls that span nodes (a pipeline across
# slots) share a small count of their own; the two together stay under a node's pool.
FANOUT_SHARE = 5  # one fifth of a node's pool is kept for calls that span nodes


@dataclass
class _Gates:
    per_node: dict[str, asyncio.Semaphore]
    fanout: asyncio.Semaphore
    node_limit: int


_gates: weakref.WeakKeyDictionary[RedisCluster, _Gates] = weakref.WeakKeyDictionary()


def _gate(client: RedisCluster, key: str | None) -> asyncio.Semaphore:
    """The permits for a call about ``key`` (its node's), or for a call spanning nodes."""
    gates = _gates.get(client)
    if gates is None:
        limit = int(client.nodes_manager.connection_kwargs.get("max_connections") or 100)
        fanout = max(1, limit // FANOUT_SHARE)
        gates = _gates[client] = _Gates({}, asyncio.Semaphore(fanout), max(1, limit - fanout))
    if key is None:
        return gates.fanout
    node = client.get_node_from_key(key)
    if node is None:
        return gates.fanout
    gate = gates.per_node.get(node.name)
    if gate is None:
        gate = gates.per_node[node.name] = asyncio.Semaphore(gates.node_limit)
    return gate


async def _initialized(client: RedisCluster) -> None:
    # redis-py 8.1's execute_command resolves command policies (opening connections to the
    # startup node) before it initializes the client; when a fresh client gets a burst of
    # concurrent commands, one task's initialize() closes the startup node under the others'
    # half-open connections ("'NoneType' object has no attribute 'writelines'"). Initializing
    # first avoids it. The flag check skips a coroutine per call once initialized.
    if getattr(client, "_initialize", True):
        await client.initialize()


_call_timeout: float | None = None
_wait_ms: int | None = None


def _durable_wait_ms() -> int:
    global _wait_ms
    if _wait_ms is None:
        _wait_ms = int(settings.DURABLE_WAIT_MS)
    return _wait_ms


def _timeout() -> float:
    """The bound of one whole call, retries included: REDIS_SOCKET_TIMEOUT, or less if the
    caller's ``call_deadline`` comes first."""
    global _call_timeout
    if _call_timeout is None:
        _call_timeout = float(settings.REDIS_SOCKET_TIMEOUT)
    deadline = _deadline.get()
    if deadline is None:
        return _call_timeout
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise DependencyDown("the caller's deadline passed before this call")
    return min(_call_timeout, left)


def call_timeout() -> float:
    """The bound a call that is not a script's (a channel-layer send) should keep to now: the
    same as a script call's. Raises ``DependencyDown`` if the caller's deadline has passed."""
    return _timeout()


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "hotstate_deadline", default=None
)


@contextlib.contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Bound every Redis call of this task (and the tasks it starts) to end within ``seconds``
    from now, all together: a call that would run past it fails with ``DependencyDown``, as one
    whose own timeout passed. A request's answer then comes within a bound however many
    primaries stall one after the other (each call alone is bounded by REDIS_SOCKET_TIMEOUT)."""
    token = _deadline.set(asyncio.get_running_loop().time() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


@receiver(setting_changed)
def _timeout_changed(*, setting: str, **kwargs: object) -> None:
    global _call_timeout
    global _wait_ms
    if setting == "REDIS_SOCKET_TIMEOUT":
        _call_timeout = None
    if setting == "DURABLE_WAIT_MS":
        _wait_ms = None


class ScriptHeaderError(Exception):
    """A .lua file breaks the header or body rules; the message names the file and the rule."""


@dataclass(frozen=True)
class LuaScript:
    """One parsed, checked script."""

    name: str
    filename: str
    numkeys: int
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    variadic: bool
    codes: frozenset[str]
    source: str
    sha: str


def parse_script(path: Path) -> LuaScript:
    """Read one .lua file and check it against the rules above."""
    match = _FILENAME.match(path.name)
    if not match:
        raise ScriptHeaderError(f"{path.name}: file name is not <entity>_<verb>-<numkeys>.lua")
    name, numkeys = match["name"], int(match["numkeys"])
    source = path.read_text()
    lines = source.splitlines()
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line)
    body = "\n".join(lines[len(header) :])

    def fail(rule: str) -> ScriptHeaderError:
        return ScriptHeaderError(f"{path.name}: {rule}")

    title = _TITLE.match(header[0]) if header else None
    if not title or title["name"] != name:
        raise fail(f"the header must start with '-- {name}: <what it does>'")
    keys: list[str] = []
    argv: list[str] = []
    codes: set[str] = set()
    variadic = False
    for line in header[1:]:
        if key := _KEY.match(line):
            if int(key["index"]) != len(keys) + 1:
                raise fail(f"KEYS[{key['index']}] is out of order")
            keys.append(key["name"])
        elif arg := _ARG.match(line):
            if variadic:
                raise fail("only the last ARGV may be variadic")
            if int(arg["index"]) != len(argv) + 1:
                raise fail(f"ARGV[{arg['index']}] is out of order")
            argv.append(arg["name"])
            variadic = arg["variadic"] is not None
        elif ret := _RETURN.match(line):
            codes.add(ret["code"])
        elif line.startswith(("-- KEYS", "-- ARGV", "-- RETURN")):
            raise fail(f"unreadable header line {line!r}")
    if len(keys) != numkeys:
        raise fail(f"the header lists {len(keys)} KEYS but the file name says {numkeys}")
    if not codes:
        raise fail("the header lists no RETURN code")
    unknown = codes - set(Code)
    if unknown:
        raise fail(f"codes {sorted(unknown)} are not in hotstate.codes.Code")

    used_keys = {int(i) for i in _BODY_KEY.findall(body)}
    if used_keys != set(range(1, numkeys + 1)):
        raise fail(f"the body uses KEYS {sorted(used_keys)}, the header declares 1..{numkeys}")
    fixed = len(argv) - 1 if variadic else len(argv)
    beyond = sorted(i for i in {int(i) for i in _BODY_ARG.findall(body)} if i > fixed)
    if beyond:
        raise fail(f"the body reads ARGV {beyond} beyond the declared fixed ARGV 1..{fixed}")
    returned = {a or b for a, b in _BODY_CODE.findall(body)}
    if returned != codes:
        raise fail(f"the body returns {sorted(returned)}, the header declares {sorted(codes)}")
    for call in _BODY_CALL.finditer(body):
        first = (call["first"] or "").strip()
        if call["command"] not in _KEYLESS_COMMANDS and not _BODY_KEY.fullmatch(first):
            raise fail(f"redis.call('{call['command']}', {first}): a key must be KEYS[i]")
    return LuaScript(
        name=name,
        filename=path.name,
        numkeys=numkeys,
        keys=tuple(keys),
        argv=tuple(argv),
        variadic=variadic,
        codes=frozenset(codes),
        source=source,
        sha=hashlib.sha1(source.encode()).hexdigest(),
    )


Arg = str | int | float


class ScriptRegistry:
    """Every script of a directory, loaded once; ``call`` runs one by name."""

    def __init__(self, directory: Path = LUA_DIR) -> None:
        scripts = [parse_script(path) for path in sorted(directory.glob("*.lua"))]
        self.scripts: Mapping[str, LuaScript] = {script.name: script for script in scripts}
        if len(self.scripts) != len(scripts):
            raise ScriptHeaderError(f"two files in {directory} define the same script name")

    def __getitem__(self, name: str) -> LuaScript:
        return self.scripts[name]

    async def call(
        self,
        name: str,
        *,
        keys: Sequence[str],
        args: Iterable[Arg] = (),
        client: RedisCluster | None = None,
        subject: str = "",
        durable: bool = False,
    ) -> Reply:
        """Run script ``name``; codes become a :class:`Reply` or a refusal in ``decode``.

        ``subject`` names what the call is about (a job id) in refusal messages. ``durable``:
        the script's writes reach one replica before the call returns, or ``DURABLE_WAIT_MS``
        passes (``WAIT`` in the same pipeline, so on the same connection as the script; a
        replica that lags or is down delays the answer by at most that bound, and the write is
        then only as safe as its primary: the loss is noticed later, as ``JOB_LOST``).
        """
        script = self.scripts[name]
        if len(keys) != script.numkeys:
            raise ValueError(f"{script.filename} takes {script.numkeys} keys, got {len(keys)}")
        cluster = client or get_client()
        if not isinstance(args, list | tuple):
            args = tuple(args)  # a NOSCRIPT retry sends them again
        # dependency_guard's mapping, inlined: this is the hot path of every commit.
        try:
            async with asyncio.timeout(_timeout()):
                await _initialized(cluster)
                async with _gate(cluster, keys[0]):
                    raw = await self._run(cluster, script, keys, args, durable=durable)
        except UNAVAILABLE_ERRORS as exc:
            raise DependencyDown(f"{name}: {type(exc).__name__}: {exc}") from exc
        return decode(raw, script=name, declared=script.codes, subject=subject)

    async def _run(
        self,
        cluster: RedisCluster,
        script: LuaScript,
        keys: Sequence[str],
        args: Iterable[Arg],
        *,
        durable: bool,
    ) -> Any:
        if durable and _durable_wait_ms():
            return await self._evalsha_durable(cluster, script, keys, args)
        return await self._evalsha(cluster, script, keys, args)

    async def _evalsha(
        self, client: RedisCluster, script: LuaScript, keys: Sequence[str], args: Iterable[Arg]
    ) -> Any:
        for _ in range(NOSCRIPT_RETRIES):
            try:
                return await client.evalsha(script.sha, script.numkeys, *keys, *args)
            except NoScriptError:
                await self._load(client, script, keys)
        raise DependencyDown(
            f"{script.name}: NOSCRIPT {NOSCRIPT_RETRIES} times; the slot keeps moving"
        )

    async def _evalsha_durable(
        self, client: RedisCluster, script: LuaScript, keys: Sequence[str], args: Iterable[Arg]
    ) -> Any:
        for _ in range(NOSCRIPT_RETRIES):
            node = client.get_node_from_key(keys[0])
            if node is None:
                raise DependencyDown(f"{script.name}: no primary serves the slot")
            # redis-py refuses pipe.evalsha() on a cluster; the raw command is routed by its keys.
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, script.numkeys, *keys, *args)
            pipe.execute_command("WAIT", 1, _durable_wait_ms(), target_nodes=node)
            try:
                raw, replicas = await pipe.execute()
            except NoScriptError:
                await self._load(client, script, keys)
                continue
            if not replicas:
                logger.debug("%s: no replica confirmed the write in time", script.name)
            return raw
        raise DependencyDown(
            f"{script.name}: NOSCRIPT {NOSCRIPT_RETRIES} times; the slot keeps moving"
        )

    async def _load(self, client: RedisCluster, script: LuaScript, keys: Sequence[str]) -> None:
        """A new or newly promoted primary: load the script where the slot lives now."""
        node = client.get_node_from_key(keys[0])
        if node is None:
            raise DependencyDown(f"{script.name}: no primary serves the slot") from None
        logger.info("loading script %s on %s", script.filename, node.name)
        await client.execute_command("SCRIPT LOAD", script.source, target_nodes=node)


SCRIPTS = ScriptRegistry()

T = TypeVar("T")


async def bounded(
    what: str, client: RedisCluster, awaitable: Awaitable[T], *, key: str | None = None
) -> T:
    """Await a plain command of ``client`` under the same bound, gate and error mapping as a
    script call. ``key``: a key of the one slot the command touches (its node's permits);
    None for a command that spans nodes."""
    try:
        with dependency_guard(what):
            async with asyncio.timeout(_timeout()):
                await _initialized(client)
                async with _gate(client, key):
                    return await awaitable
    finally:
        # Not awaited when the cluster failed first; closing a finished coroutine is a no-op.
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
