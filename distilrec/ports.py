"""A free local TCP port, for the commands, benchmarks and tests that start a server of their own."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that no socket holds at the moment of the call (the operating system's
    choice for a bind to port 0). Another process may take it before the caller binds it; callers that
    start a server on it check that the server came up.

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
