"""How the app is served: uvicorn, with a deadline on request headers and a prompt stop.

uvicorn (0.55) times out an idle keep-alive connection, but not one that is sending its
headers: a client that opens a connection and sends half a request line, or one header
byte a second, held it open for as long as it liked (issue 30: 90 s and more, 100 such
connections at once). `TimedH11Protocol` gives every request `header_timeout_s` from the
moment the connection opens, or the previous response ends, to finish its headers; then
it answers 408 (or, if nothing was sent, just closes). Slow *bodies* are the `Guard`'s
(`security.py`), slow *models* the engine's (`engine.py`): both answer too, 408 and 503.

Stopping: on SIGTERM or Ctrl+C uvicorn waits for running requests; with a model stuck in a
request (a hostile model folder, a deadlock) it waited forever. It now waits
`shutdown_grace_s`, then stops; a model call still running in a worker thread is left
behind rather than joined (`_leave`), since Python cannot interrupt a thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_TIMEOUT_BODY = b'{"error": "request headers did not arrive in time"}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"x-content-type-options: nosniff\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (`header_timeout_s`,
    set by `timed_protocol`). The timer runs from the connection's start and from the end of
    each response, and is not reset by data: a trickle of header bytes meets it too."""

    header_timeout_s: float = 10.0
    _header_timer: Any = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if serving or self.transport.is_closing():
            return  # headers arrived: the body and compute deadlines take over
        pending, _ = self.conn.trailing_data
        if pending and self.conn.their_state is h11.IDLE:  # half a request: say why
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def timed_protocol(header_timeout_s: float) -> type[TimedH11Protocol]:
    """The protocol class uvicorn builds per connection, with this header deadline."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_config(
    app, host: str, port: int, header_timeout_s: float, shutdown_grace_s: float, **extra: Any
):
    """uvicorn's Config for thumbview: the timed h11 protocol, a bounded graceful stop
    (`extra`: more uvicorn settings, e.g. `log_level`)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=timed_protocol(header_timeout_s),
        timeout_keep_alive=min(5.0, header_timeout_s),
        timeout_graceful_shutdown=shutdown_grace_s,
        **extra,
    )


def serve(app, host: str, port: int, header_timeout_s: float, shutdown_grace_s: float) -> None:
    """Serve until SIGTERM / Ctrl+C; return (or exit) within about `shutdown_grace_s` of it,
    even with a request stuck in the model."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, host, port, header_timeout_s, shutdown_grace_s))
    try:
        server.run()  # re-raises the signal that stopped it: SIGTERM ends the process here
    except KeyboardInterrupt:
        _leave(shutdown_grace_s, 130)
        raise
    _leave(shutdown_grace_s, 0)


def _leave(grace_s: float, code: int) -> None:
    """Give worker threads `grace_s` to finish; if one is still busy (a model call that never
    returns), end the process now instead of letting the interpreter join it forever."""
    deadline = time.monotonic() + grace_s
    for thread in _busy_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = _busy_threads()
    if not stuck:
        return
    log.warning(
        "stopping with %d request thread(s) still running (%s); not waiting for them",
        len(stuck),
        ", ".join(t.name for t in stuck[:3]),
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _busy_threads() -> list[threading.Thread]:
    """Threads the interpreter would wait for at exit (not daemon, alive, not this one)."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]
