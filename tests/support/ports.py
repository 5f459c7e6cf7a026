"""A free TCP port, for the servers the tests start."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now ("" checks every interface, for servers that bind them all).
    The OS may hand it out again before the caller binds it; the servers we start fail loudly."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
