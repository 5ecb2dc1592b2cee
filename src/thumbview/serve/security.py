"""Request guards in front of every route, and the headers every response carries.

The server is meant for one person's loopback, but a browser on that machine visits other
sites too: a page elsewhere can make it POST to 127.0.0.1, or rebind a DNS name to it.
So, before a route runs:

- the `Host` header must name an allowed host (loopback names by default): DNS rebinding;
- a state-changing request (POST, PUT, PATCH, DELETE) must come from the page's own origin
  when it says where it comes from (`Origin`, else `Referer`, and `Sec-Fetch-Site`).
  A request that carries none of them is not from a browser page (browsers always send
  `Origin` on cross-origin POSTs) and is allowed, so `curl` and scripts keep working;
- the body is counted as it streams and refused with 413 at the cap, whatever
  `Content-Length` says or whether there is one (chunked uploads);
- the body must keep pace (`BodyPace`): a body that stalls, or trickles in a byte at a
  time, is answered 408 and its connection closed, instead of holding a connection and a
  request task for as long as the client likes;
- multipart form fields are checked as they stream: a field sent twice where one is
  expected (two `image` parts) is a 400, a text field that is not UTF-8 a 422.

Every response gets `X-Content-Type-Options: nosniff` and a Content-Security-Policy that
allows only this server's own scripts and styles and forbids framing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Form fields that may repeat (lists); every other field must appear at most once.
REPEATABLE_FIELDS = ("images", "titles")
MAX_FIELD_BYTES = 64 * 1024  # a text field held for the UTF-8 check (titles are 300 chars)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", CSP),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)


@dataclass(frozen=True)
class Security:
    """Who may talk to the server.

    allowed_hosts: host names accepted in the `Host` header (no port); "*" accepts any.
    same_origin_posts: refuse state-changing requests whose Origin/Referer is elsewhere.
    """

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    same_origin_posts: bool = True

    def with_host(self, host: str) -> Security:
        """Also allow the name the server is bound to (unless it is a wildcard address)."""
        if host in ("0.0.0.0", "::", "") or host in self.allowed_hosts:
            return self
        return Security(self.allowed_hosts + (host,), self.same_origin_posts)


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must arrive: all of it within `grace_s` plus one second per
    `min_bytes_per_s` received so far. A stalled body (nothing more) and a trickled one (a
    byte a second) both miss it after about `grace_s`; a large upload at a LAN's speed
    never does (64 KB/s lets 512 MB take 2 hours)."""

    grace_s: float = 10.0
    min_bytes_per_s: float = 64 * 1024

    def seconds_left(self, elapsed: float, received: int) -> float:
        return self.grace_s + received / self.min_bytes_per_s - elapsed


class Refused(HTTPException):
    """A request a guard refuses; raised inside `receive`, so the app's handler words it."""


def host_name(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'LocalHost' -> 'localhost'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(method: str, headers: Headers, scheme: str, security: Security) -> Refused | None:
    """Why this request may not reach a route (host or origin), or None when it may."""
    host = headers.get("host", "")
    if "*" not in security.allowed_hosts and host_name(host) not in security.allowed_hosts:
        return Refused(
            400,
            f"host {host_name(host)[:80]!r} is not served here (allowed: "
            f"{', '.join(security.allowed_hosts)}; see thumbview serve --allow-host)",
        )
    if not security.same_origin_posts or method not in UNSAFE_METHODS:
        return None
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return Refused(403, "cross-site request refused: use the thumbview page itself")
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return None  # not a browser page: curl, scripts (see the module docstring)
    parts = urlsplit(source)
    if source == "null" or (parts.scheme, parts.netloc.lower()) != (scheme, host.lower()):
        return Refused(403, f"cross-origin request refused (from {source[:80]!r})")
    return None


class FormCheck:
    """Streams a multipart body through python-multipart beside the app's own parser, so a
    repeated single field or a non-UTF-8 text field is refused before it is spooled."""

    def __init__(self, content_type: str):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._parse_options = parse_options_header
        _, params = parse_options_header(content_type)
        self.seen: dict[str, int] = {}
        self._header, self._value, self._disposition = b"", b"", b""
        self._name, self._text, self._is_file = "", bytearray(), False
        self._parser = None
        if b"boundary" in params:
            self._parser = MultipartParser(params[b"boundary"], self._callbacks())

    def _callbacks(self) -> dict[str, Callable]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("_header", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def feed(self, chunk: bytes) -> None:
        if self._parser is None or not chunk:
            return
        try:
            self._parser.write(chunk)
        except Refused:
            raise
        except Exception:  # malformed multipart: the app's own parser words the error
            self._parser = None

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self._disposition, self._text, self._is_file = b"", bytearray(), False

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = self._parse_options(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in options
        self.seen[self._name] = self.seen.get(self._name, 0) + 1
        if self.seen[self._name] > 1 and self._name not in REPEATABLE_FIELDS:
            raise Refused(400, f"send one {self._name[:40]!r} part per request, got two or more")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file and len(self._text) <= MAX_FIELD_BYTES:
            self._text.extend(data[start:end])

    def _end(self) -> None:
        if self._is_file or len(self._text) > MAX_FIELD_BYTES:  # too long: refused by length
            return
        try:
            bytes(self._text).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(422, f"form field {self._name[:40]!r} is not UTF-8 text") from None


class Guard:
    """ASGI middleware: host and origin checks, the streamed body cap and pace, the form
    check and the security headers. `body_cap(path)` is the byte cap for a request to `path`."""

    def __init__(
        self,
        app: ASGIApp,
        security: Security,
        body_cap: Callable[[str], int],
        pace: BodyPace = BodyPace(),
    ):
        self.app, self.security, self.body_cap, self.pace = app, security, body_cap, pace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body()
        send = _with_headers(send, body)
        headers = Headers(scope=scope)
        refused = refusal(scope["method"], headers, scope.get("scheme", "http"), self.security)
        cap = self.body_cap(scope["path"])
        declared = headers.get("content-length", "")
        if refused is None and declared.isdigit() and int(declared) > cap:
            refused = Refused(413, f"request body is larger than the {cap / 2**20:.0f} MB limit")
        if refused is not None:
            await _send_error(send, refused)
            return
        await self.app(scope, _checked_receive(receive, cap, headers, self.pace, body), send)


class _Body:
    """What the guard saw of one request's body: bytes so far, whether it is complete, and
    whether it was refused (then the response closes the connection: the rest is unread)."""

    def __init__(self) -> None:
        self.start, self.received, self.complete, self.refused = time.monotonic(), 0, False, False

    def refuse(self, status: int, message: str) -> Refused:
        self.refused = True
        return Refused(status, message)


def _checked_receive(
    receive: Receive, cap: int, headers: Headers, pace: BodyPace, body: _Body
) -> Receive:
    """`receive` that counts body bytes (413 past `cap`), holds the body to `pace` (408),
    and feeds multipart to `FormCheck`. Once the body is complete, later calls (Starlette
    listening for a disconnect while it streams a response) are passed through untimed."""
    content_type = headers.get("content-type", "")
    form = FormCheck(content_type) if content_type.startswith("multipart/form-data") else None

    async def checked() -> Message:
        if body.complete:
            return await receive()
        left = pace.seconds_left(time.monotonic() - body.start, body.received)
        try:
            message = await asyncio.wait_for(receive(), max(left, 0.0))
        except TimeoutError:
            raise body.refuse(
                408, f"request body too slow: {body.received:,} bytes after {pace.grace_s:g} s"
            ) from None
        if message["type"] != "http.request":
            body.complete = True  # http.disconnect
            return message
        chunk = message.get("body", b"")
        body.received += len(chunk)
        body.complete = not message.get("more_body", False)
        if body.received > cap:
            raise body.refuse(413, f"request body is larger than the {cap / 2**20:.0f} MB limit")
        if form is not None:
            try:
                form.feed(chunk)
            except Refused:
                body.refused = True
                raise
        return message

    return checked


def _with_headers(send: Send, body: _Body | None = None) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in SECURITY_HEADERS:
                headers.setdefault(name, value)
            if body is not None and body.refused:  # the rest of the body stays unread
                headers["connection"] = "close"
        await send(message)

    return sending


async def _send_error(send: Send, exc: Refused) -> None:
    body = json.dumps({"error": exc.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
