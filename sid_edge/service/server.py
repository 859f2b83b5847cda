"""Run the service on uvicorn with a graceful stop: SIGTERM (or Ctrl-C) -> not ready, stop accepting connections,
finish the requests in progress and the images in the queue, then exit.

uvicorn's own shutdown does the connection part (close the listening sockets, wait for open requests up to
``timeout_graceful_shutdown``); the application's lifespan then drains the batching core. After a signal, uvicorn
re-raises it once the server has stopped, so the process ends with that signal's status (143 for SIGTERM).
"""

from __future__ import annotations

import socket

import uvicorn

from sid_edge.service.core import BatchingDetector

__all__ = ["DrainingServer", "bind_socket", "serve"]


class DrainingServer(uvicorn.Server):
    """A uvicorn Server that marks the batching core as draining (``/readyz`` -> 503, new detections -> 503) the
    moment a stop signal arrives, before uvicorn begins closing connections."""

    def __init__(self, config: uvicorn.Config, core: BatchingDetector):
        super().__init__(config)
        self.core = core

    def handle_exit(self, sig, frame) -> None:
        self.core.stop_accepting()
        super().handle_exit(sig, frame)


def serve(app, core: BatchingDetector, *, host: str = "127.0.0.1", port: int = 8000,
          graceful_timeout_s: float = 60.0, log_level: str = "warning", sock: socket.socket | None = None) -> None:
    """Serve ``app`` (from :func:`~sid_edge.service.app.create_app`) until a stop signal; blocks.

    Args:
        host, port: where to listen (127.0.0.1 by default: reachable from this machine only).
        graceful_timeout_s: after a stop signal, how long uvicorn waits for requests in progress.
        log_level: uvicorn's own log level (the access log is the application's, one JSON line per request).
        sock: an already bound socket to serve on instead of host/port (tests).

    Raises:
        OSError: the address cannot be bound (in use, not permitted).
    """
    sock = sock or bind_socket(host, port)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, server_header=False)
    server = DrainingServer(config, core)
    server.run(sockets=[sock])


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), SO_REUSEADDR set; port 0 picks a free port (``getsockname()[1]``).
    Raises OSError (address in use, not permitted, unknown host) instead of uvicorn's exit."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock
