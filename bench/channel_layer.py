"""Channel layer throughput between two OS processes: clusterlayer against channels_redis.

    .venv/bin/python bench/channel_layer.py [--messages N] [--window W] [--repeats R]

For each layer, a receiver process makes a process-local channel (``new_channel()``) and prints
its name; a sender process sends N messages to it; the receiver takes them one ``receive()`` at
a time. clusterlayer runs on the local Redis Cluster (started or reused); channels_redis runs on
a standalone redis-server this script starts on a free port and stops at the end.

Two ways of sending are measured, because they differ most:

- ``awaited``: the sender awaits each send before the next (one message in flight), like one
  consumer replying to one socket;
- ``windowed``: the sender keeps W sends in flight (``asyncio.gather`` over W at a time), like
  many consumers of one process sending at once.

The rate is N divided by the time from the sender's first send to the receiver's last receive
(both clocks are this machine's). Capacity is set above N for both layers, so nothing is refused
or dropped; the receiver checks that it got all N and whether they came in order. Every run
prints the median and the range over the repeats, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS = ("clusterlayer", "channels_redis")
MODES = ("awaited", "windowed")


def make_layer(kind: str, url: str, prefix: str, capacity: int) -> Any:
    if kind == "clusterlayer":
        from clusterlayer import ClusterChannelLayer

        return ClusterChannelLayer(
            url=url, prefix=prefix, capacity=capacity, inbox_capacity=capacity
        )
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[url], prefix=prefix, capacity=capacity)


async def close_layer(layer: Any) -> None:
    if hasattr(layer, "close"):
        await layer.close()
    else:
        await layer.close_pools()


# --- the two roles, each in its own OS process -----------------------------------------------


async def run_receiver(args: argparse.Namespace) -> None:
    layer = make_layer(args.layer, args.url, args.prefix, args.messages + 10)
    channel = await layer.new_channel()
    print(json.dumps({"channel": channel}), flush=True)
    await layer.receive(channel)  # the sender's warm-up message
    in_order = True
    for expected in range(args.messages):
        message = await layer.receive(channel)
        in_order = in_order and message["i"] == expected
    end = time.time()
    await close_layer(layer)
    print(json.dumps({"end": end, "received": args.messages, "in_order": in_order}), flush=True)


async def run_sender(args: argparse.Namespace) -> None:
    layer = make_layer(args.layer, args.url, args.prefix, args.messages + 10)
    channel = args.channel
    await layer.send(channel, {"type": "bench.warmup", "i": -1})  # connections are open now
    body = "x" * args.size
    start = time.time()
    if args.mode == "awaited":
        for i in range(args.messages):
            await layer.send(channel, {"type": "bench.message", "i": i, "body": body})
    else:
        for first in range(0, args.messages, args.window):
            last = min(first + args.window, args.messages)
            await asyncio.gather(
                *(
                    layer.send(channel, {"type": "bench.message", "i": i, "body": body})
                    for i in range(first, last)
                )
            )
    sent = time.time()
    await close_layer(layer)
    print(json.dumps({"start": start, "sent": sent}), flush=True)


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass
class Run:
    layer: str
    mode: str
    rate: float  # messages per second, sender's first send to receiver's last receive
    send_rate: float  # messages per second the sender finished its sends at
    in_order: bool


def spawn(role: str, **options: Any) -> subprocess.Popen[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def last_json(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args} exited with {process.returncode}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def measure(layer: str, mode: str, url: str, args: argparse.Namespace) -> Run:
    common = {"layer": layer, "url": url, "prefix": f"bench-{secrets.token_hex(4)}"}
    common |= {"messages": args.messages, "size": args.size}
    children = [spawn("receiver", **common)]
    try:
        receiver = children[0]
        assert receiver.stdout is not None
        channel = json.loads(receiver.stdout.readline())["channel"]
        sender = spawn("sender", **common, mode=mode, window=args.window, channel=channel)
        children.append(sender)
        sent = last_json(sender, timeout=args.timeout)
        received = last_json(receiver, timeout=args.timeout)
    finally:
        for child in children:  # only ours, and only if a failure left them running
            if child.poll() is None:
                child.kill()
                child.wait()
    elapsed = received["end"] - sent["start"]
    return Run(
        layer=layer,
        mode=mode,
        rate=args.messages / elapsed,
        send_rate=args.messages / (sent["sent"] - sent["start"]),
        in_order=bool(received["in_order"]),
    )


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    server = subprocess.run(
        [shutil.which("redis-server") or "redis-server", "--version"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": server,
    }


def main(args: argparse.Namespace) -> None:
    from clusterlayer.tests.standalone_redis import StandaloneRedis
    from hotstate.localcluster import from_environment

    cluster = from_environment()
    print(cluster.start(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-channel-layer-") as directory:
        standalone = StandaloneRedis.start(Path(directory))
        try:
            urls = {"clusterlayer": cluster.url, "channels_redis": standalone.url}
            runs: list[Run] = []
            for repeat in range(args.repeats):
                for mode in MODES:
                    for layer in LAYERS:
                        run = measure(layer, mode, urls[layer], args)
                        runs.append(run)
                        print(
                            f"  [{repeat + 1}/{args.repeats}] {layer:14} {mode:8} "
                            f"{run.rate:9.0f} msg/s end to end, sender done at "
                            f"{run.send_rate:9.0f} msg/s, in order: {run.in_order}",
                            flush=True,
                        )
        finally:
            standalone.stop()
    report(runs, args)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    info = machine()
    print()
    print(f"{info['date']}; {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}")
    print(f"{info['redis_server']}")
    print(
        f"{args.messages} messages of {args.size} body bytes per run, window {args.window}, "
        f"{args.repeats} repeats; median (min-max) msg/s, first send to last receive"
    )
    print()
    print("| mode | clusterlayer | channels_redis | ratio |")
    print("|---|---|---|---|")
    summary: dict[str, Any] = {"machine": info, "args": vars(args), "modes": {}}
    for mode in MODES:
        cells = []
        medians = []
        for layer in LAYERS:
            rates = [run.rate for run in runs if run.layer == layer and run.mode == mode]
            medians.append(statistics.median(rates))
            cells.append(f"{medians[-1]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})")
        ratio = medians[0] / medians[1]
        summary["modes"][mode] = {"clusterlayer": medians[0], "channels_redis": medians[1]}
        summary["modes"][mode]["ratio"] = ratio
        print(f"| {mode} | {cells[0]} | {cells[1]} | {ratio:.1f}x |")
    print()
    print(json.dumps(summary))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--window", type=int, default=100, help="sends in flight (windowed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per layer and mode")
    parser.add_argument("--size", type=int, default=100, help="bytes of body per message")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    # Internal: the roles of the two child processes.
    parser.add_argument("--role", choices=["main", "receiver", "sender"], default="main")
    parser.add_argument("--layer", choices=LAYERS)
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--url")
    parser.add_argument("--prefix")
    parser.add_argument("--channel")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.role == "receiver":
        asyncio.run(run_receiver(arguments))
    elif arguments.role == "sender":
        asyncio.run(run_sender(arguments))
    else:
        main(arguments)
