"""Counting this process's open connections to the local Redis Cluster (leak tests)."""

from __future__ import annotations

import psutil


def connections_to(url: str) -> int:
    """This process's established TCP connections to the cluster whose first node is ``url``
    (the local cluster: six consecutive ports)."""
    base = int(url.rsplit(":", 1)[1].split("/")[0])
    ports = range(base, base + 6)
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port in ports and conn.status == psutil.CONN_ESTABLISHED
    )
