"""Loopback ports for the processes and servers that tests start."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bound, read, released).

    Another program may take it before the caller binds it: a caller that starts a server on
    it checks that the server came up, and tries another port if it must.
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
