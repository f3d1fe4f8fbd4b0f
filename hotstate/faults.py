"""Faults to inject into a deployment on this machine: its Redis Cluster members and its daphnes.

The chaos tests (``tests/chaos``) and ``manage.py simulate --fault <name>`` use them to check
DESIGN.md's promises under failure ("Durability and recovery", "Invariants"). They act on real
processes by pid, so they work only on a cluster whose members run on this machine, started by
``hotstate.localcluster`` (a killed member is started again from its own data folder).

Each fault is a plain blocking function that returns when the fault is over, with notes on what
it did and saw (times in seconds from its start); run it in a thread from async code. ``FAULTS``
names them for the command line; docs/faults.md says what each one promises to exercise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hotstate.localcluster import SLOT_COUNT, LocalCluster

KILL_PRIMARY = "kill-primary"
PAUSE_PRIMARIES = "pause-primaries"
FREEZE_CLUSTER = "freeze-cluster"
KILL_INSTANCE = "kill-instance"
FAULTS = (KILL_INSTANCE, KILL_PRIMARY, PAUSE_PRIMARIES, FREEZE_CLUSTER)
"""The faults of this module, by the names ``manage.py simulate --fault`` takes."""

RECOVERY_TIMEOUT_S = 60.0
POLL_S = 0.1


class FaultError(Exception):
    """The fault could not be injected, or the cluster did not come back from it in time."""


@dataclass(frozen=True)
class Member:
    """One member of the cluster as ``CLUSTER NODES`` shows it."""

    node_id: str
    host: str
    port: int
    primary: bool
    primary_id: str | None
    failed: bool


class Notes:
    """What a fault did, each line stamped with the seconds since the fault began."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self.lines: list[str] = []

    def add(self, text: str) -> None:
        self.lines.append(f"+{time.monotonic() - self._start:.1f}s {text}")


# --- reading the cluster ---------------------------------------------------------------------


def _conn(host: str, port: int, *, timeout: float = 1.0) -> redis.Redis:
    """A connection to one member that fails fast (a stopped member must not stall a probe)."""
    return redis.Redis(
        host=host,
        port=port,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _seed(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def cluster_members(url: str) -> list[Member]:
    """Every member of the cluster at ``url`` (any reachable member answers for all)."""
    host, port = _seed(url)
    # redis-py parses the reply: {"host:port": {"node_id", "flags", "master_id", ...}}.
    nodes = _conn(host, port).execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
    members = []
    for address, fields in dict(nodes).items():
        member_host, _, member_port = str(address).split("@")[0].rpartition(":")
        flags = set(str(fields["flags"]).replace("myself", "").split(","))
        master_id = str(fields.get("master_id", "-"))
        members.append(
            Member(
                node_id=str(fields["node_id"]),
                host=member_host or host,
                port=int(member_port),
                primary="master" in flags,
                primary_id=None if master_id in ("-", "") else master_id,
                failed=bool(flags & {"fail", "fail?", "noaddr"}),
            )
        )
    return sorted(members, key=lambda m: m.port)


def _live_seed(members: list[Member], *, skip: int | None = None) -> str:
    for member in members:
        if member.port != skip and _answers(member.host, member.port):
            return f"redis://{member.host}:{member.port}"
    raise FaultError("no member of the cluster answers")


def _answers(host: str, port: int) -> bool:
    try:
        return bool(_conn(host, port, timeout=0.5).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def _serves_every_slot(host: str, port: int) -> bool:
    try:
        info = dict(_conn(host, port).execute_command("CLUSTER INFO"))  # type: ignore[no-untyped-call]
    except (redis.exceptions.RedisError, OSError):
        return False
    return info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == SLOT_COUNT


def _wait(predicate: Callable[[], bool], what: str, timeout: float = RECOVERY_TIMEOUT_S) -> float:
    """Poll ``predicate`` until it holds; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise FaultError(f"the cluster did not {what} within {timeout:g} s")
        time.sleep(POLL_S)
    return time.monotonic() - start


def _pid(member: Member) -> int:
    return int(_conn(member.host, member.port).info("server")["process_id"])


def _data_dir(member: Member) -> Path:
    directory = _conn(member.host, member.port).config_get("dir").get("dir", "")
    return Path(str(directory)).parent


# --- Redis faults ----------------------------------------------------------------------------


def kill_primary(url: str, *, port: int | None = None) -> list[str]:
    """``kill -9`` a primary (the one on ``port``, or the first), wait until its replica serves
    its slots, then start it again and wait until it is back, as a replica."""
    notes = Notes()
    members = cluster_members(url)
    primaries = [m for m in members if m.primary and not m.failed]
    victim = next((m for m in primaries if port in (None, m.port)), None)
    if victim is None:
        raise FaultError(f"no live primary {'on port ' + str(port) if port else ''} to kill")
    replicas = [m for m in members if m.primary_id == victim.node_id]
    data_dir, pid = _data_dir(victim), _pid(victim)
    os.kill(pid, signal.SIGKILL)
    notes.add(f"killed primary :{victim.port} (pid {pid}) with SIGKILL")
    others = [m for m in members if m.port != victim.port]

    def failed_over() -> bool:
        promoted = [r for r in replicas if _role(r) == "master"]
        return bool(promoted) and all(_serves_every_slot(m.host, m.port) for m in others)

    took = _wait(failed_over, "fail over the killed primary")
    promoted = [r.port for r in replicas if _role(r) == "master"]
    notes.add(f"replica :{promoted[0]} serves its slots (failover took {took:.1f} s)")
    LocalCluster(host=victim.host, data_dir=data_dir).start_member(victim.port)
    took = _wait(lambda: _attached_replica(victim), "take the killed primary back as a replica")
    _wait(lambda: all(_serves_every_slot(m.host, m.port) for m in members), "serve every slot")
    notes.add(f":{victim.port} restarted and back as a replica ({took:.1f} s)")
    return notes.lines


def _role(member: Member) -> str:
    try:
        return str(_conn(member.host, member.port).info("replication").get("role", ""))
    except (redis.exceptions.RedisError, OSError):
        return ""


def _attached_replica(member: Member) -> bool:
    try:
        replication = _conn(member.host, member.port).info("replication")
    except (redis.exceptions.RedisError, OSError):
        return False
    return replication.get("role") == "slave" and replication.get("master_link_status") == "up"


def pause_primaries(url: str, *, each_s: float) -> list[str]:
    """``CLIENT PAUSE <each_s> WRITE`` on every primary in turn: writes to each stall for
    ``each_s`` seconds (reads go on), one primary after the other."""
    notes = Notes()
    primaries = [m for m in cluster_members(url) if m.primary and not m.failed]
    for member in primaries:
        _conn(member.host, member.port).execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "PAUSE", int(each_s * 1000), "WRITE"
        )
        notes.add(f"paused writes on primary :{member.port} for {each_s:g} s")
        time.sleep(each_s)  # the fault's own length: the pause ends by itself
    notes.add("the last pause ended")
    return notes.lines


def freeze_cluster(url: str, *, seconds: float) -> list[str]:
    """Every member stopped (SIGSTOP) for ``seconds``, then resumed (SIGCONT): the whole cluster
    is unreachable, connections stay open and nothing answers. Returns once every slot is
    served again (a member may have been failed over meanwhile; the notes say so)."""
    notes = Notes()
    members = cluster_members(url)
    before = {m.port for m in members if m.primary}
    with _stopped([_pid(m) for m in members]):
        notes.add(f"stopped all {len(members)} members (SIGSTOP) for {seconds:g} s")
        time.sleep(seconds)  # the fault's own length
    notes.add("resumed every member (SIGCONT)")
    took = _wait(
        lambda: all(_serves_every_slot(m.host, m.port) for m in members), "serve every slot again"
    )
    after = {m.port for m in cluster_members(_live_seed(members)) if m.primary and not m.failed}
    notes.add(
        f"every member serves every slot {took:.1f} s after resuming"
        + ("" if after == before else f"; primaries were {sorted(before)}, now {sorted(after)}")
    )
    return notes.lines


@contextlib.contextmanager
def _stopped(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids``; SIGCONT them on the way out, whatever happens in between."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# --- process faults --------------------------------------------------------------------------


def kill_instance(port: int) -> list[str]:
    """``kill -9`` the daphne instance that holds the most peers among those listening on
    ``port`` (``serve`` shares one socket among its instances, and restarts the one killed)."""
    notes = Notes()
    listening = [proc for proc in _daphnes() if _peers(proc, port) is not None]
    if not listening:
        raise FaultError(f"no daphne of this machine listens on port {port}")
    victim = max(listening, key=lambda proc: _peers(proc, port) or 0)
    peers = _peers(victim, port)
    victim.kill()
    notes.add(
        f"killed daphne pid {victim.pid} with SIGKILL ({peers} peer socket(s) on :{port}; "
        f"{len(listening) - 1} other instance(s) listening)"
    )
    return notes.lines


def _daphnes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(part.endswith("daphne") or part == "daphne" for part in cmdline):
            found.append(proc)
    return found


def _peers(proc: psutil.Process, port: int) -> int | None:
    """Established sockets ``proc`` holds on ``port``; None if it does not listen there."""
    try:
        connections = proc.net_connections(kind="tcp")
    except psutil.Error:
        return None
    mine = [c for c in connections if c.laddr and c.laddr.port == port]
    if not any(c.status == psutil.CONN_LISTEN for c in mine):
        return None
    return sum(1 for c in mine if c.status == psutil.CONN_ESTABLISHED)
