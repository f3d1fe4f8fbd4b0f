"""Every Redis key the layer uses, built here and only here, each with its hash tag.

A key's hash tag decides its slot, and every script or pipeline the layer runs touches keys of
one tag only, so each operation is single-slot on any cluster:

- ``{p:<process>}``: one process's inbox stream, its alive (heartbeat) key and its set of full
  channels. A send to a process-local channel checks and appends in one script on this slot.
- ``{c:<channel>}``: the stream of one normal (cross-process) channel, and its count of dead
  letters.
- ``{g:<group>}``: the sorted set of one group's members.

The layer prefix stays outside the tag so that ``flush`` can find every key by ``<prefix>:*``.
Channel and group names cannot contain braces (the layer validates names), so a name never
breaks out of its tag.
"""

from __future__ import annotations


def inbox(prefix: str, process: str) -> str:
    """The stream of messages for every process-local channel of ``process``."""
    return f"{prefix}:{{p:{process}}}:inbox"


def alive(prefix: str, process: str) -> str:
    """Exists while ``process`` heartbeats; its TTL is the process TTL."""
    return f"{prefix}:{{p:{process}}}:alive"


def full(prefix: str, process: str) -> str:
    """The set of ``process``'s channels whose local queue is at capacity."""
    return f"{prefix}:{{p:{process}}}:full"


def channel_stream(prefix: str, channel: str) -> str:
    """The stream of a normal channel, read through a consumer group by its receivers."""
    return f"{prefix}:{{c:{channel}}}:stream"


def dead_letters(prefix: str, channel: str) -> str:
    """How many entries of a normal channel were dropped after too many deliveries."""
    return f"{prefix}:{{c:{channel}}}:dead"


def group(prefix: str, name: str) -> str:
    """The members of a group: channel names scored by the time of their last ``group_add``."""
    return f"{prefix}:{{g:{name}}}:members"


def pattern(prefix: str) -> str:
    """A SCAN pattern matching every key of the layer ``prefix``."""
    return f"{prefix}:*"
