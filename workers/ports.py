"""The ports a command will listen on, checked before anything loads.

`rankstream up` loads two models before its gateway binds, so a busy port would otherwise
be found half a minute in, among the tracebacks of everything already started. The command
line calls `first_unavailable` first and exits with its one line. This module imports
nothing heavy: a check takes milliseconds.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Listener:
    """A port a command will listen on.

    Args:
        what: what listens there, for messages ("the gateway").
        port: the port; 0 (off, or any free port) is never checked.
        host: the address it binds.
        change: how to change it, e.g. "set RANKSTREAM_GATEWAY_PORT or --gateway-port".
    """

    what: str
    port: int
    host: str
    change: str


def bind_error(host: str, port: int) -> OSError | None:
    """Why binding `host:port` would fail now (EADDRINUSE: something listens there), or None.

    Bound as the servers bind (SO_REUSEADDR: a port whose old connections linger in
    TIME_WAIT is free to them), and released at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


def first_unavailable(listeners: Sequence[Listener]) -> str | None:
    """One line on the first listener that cannot listen, naming its port and how to change
    it; None when all can. Two listeners given the same port are a problem too."""
    wanted = [listener for listener in listeners if listener.port]
    for position, listener in enumerate(wanted):
        for other in wanted[:position]:
            if other.port == listener.port:
                return (
                    f"port {listener.port} is set for both {other.what} and {listener.what}: "
                    f"{listener.change}"
                )
    for listener in wanted:
        error = bind_error(listener.host, listener.port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            return f"port {listener.port} ({listener.what}) is in use: {listener.change}"
        why = error.strerror or type(error).__name__
        return f"port {listener.port} ({listener.what}) cannot be used ({why}): {listener.change}"
    return None
