"""HTTP GET with retries: exponential backoff with jitter, Retry-After honoured.

Thumbnail hosts and the Data API both answer 429/5xx under load and drop connections
mid-body; a million requests see every failure mode, so each one is retried a bounded
number of times and then reported, never retried forever.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "thumbview-collect/0.1 (+https://github.com/thumbview)"


class FetchError(RuntimeError):
    """A request failed for good; `status` is the last HTTP status (None for network errors)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Unreachable(FetchError):
    """The service could not be reached at all (no network, DNS failure, connection refused):
    nothing can be collected now, so the run stops and keeps its queue for the next one."""


class NotFoundError(FetchError):
    """404 / 410: the resource does not exist (a missing thumbnail size, a deleted video)."""


class RefusedError(FetchError):
    """A download refused for good: a body over the size cap, or a host not on the allow-list."""


def check_host(url: str, hosts: Collection[str]) -> None:
    """Raise `RefusedError` unless `url` is http(s) on one of `hosts` (exact host names)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.hostname or "") not in hosts:
        raise RefusedError(f"{url[:200]}: host {parts.hostname!r} is not an allowed image host")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays in seconds; attempt k waits ~ base * 2**k, capped, jittered."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # longest Retry-After we obey before giving up on it
    timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.timeout <= 0:
            raise ValueError(f"invalid retry policy {self}")


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full-jitter backoff: uniform in [0, min(max, base * 2**attempt)] (attempt from 0)."""
    return rng.uniform(0.0, min(policy.max_delay, policy.base_delay * 2.0**attempt))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class HttpClient:
    """A thread-safe GET client (one pooled `httpx.Client`) that retries transient failures."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._client = httpx.Client(
            timeout=self.policy.timeout,
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )
        self.retries = 0  # how many retries this client made (for the summary / tests)

    def close(self) -> None:
        self._client.close()

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        """GET `url`; return a 2xx response or raise NotFoundError / FetchError."""

        def once() -> httpx.Response:
            response = self._client.get(url, params=params)
            response.read()  # a body cut short raises here, inside the retry loop
            return response

        return self._with_retries(url, once)

    def download(self, url: str, sink: IO[bytes], *, max_bytes: int, hosts: Collection[str]) -> str:
        """Stream `url` into `sink` (rewound on each retry); returns the final URL.

        At most `max_bytes` are ever read (decoded), whatever `Content-Length` says or does
        not say (chunked bodies), and redirects are followed only to `hosts`: an answer
        from a hostile or broken host can neither fill the memory or disk nor point the
        collector at another server. Those refusals raise `RefusedError` and are not retried.
        """
        return str(self._with_retries(url, lambda: self._stream(url, sink, max_bytes, hosts)).url)

    def _stream(
        self, url: str, sink: IO[bytes], max_bytes: int, hosts: Collection[str]
    ) -> httpx.Response:
        for _ in range(MAX_REDIRECTS + 1):
            check_host(url, hosts)
            with self._client.stream("GET", url, follow_redirects=False) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code < 300:
                    _copy_capped(response, sink, max_bytes)
                return response
        raise RefusedError(f"{url[:200]}: more than {MAX_REDIRECTS} redirects")

    def _with_retries(self, url: str, once: Callable[[], httpx.Response]) -> httpx.Response:
        """Call `once` until it gives a 2xx; 404/410 and other 4xx raise at once."""
        last, never_connected = "no attempt", True
        for attempt in range(self.policy.attempts):
            wait: float | None = None
            try:
                response = once()
            except httpx.TransportError as e:  # timeouts, resets, truncated bodies
                last = f"{type(e).__name__}: {e}"
                never_connected &= isinstance(e, httpx.ConnectError)
            else:
                never_connected = False
                status = response.status_code
                if status < 300:
                    return response
                if status in (404, 410):
                    raise NotFoundError(f"{url}: HTTP {status}", status, _text(response))
                if status not in RETRY_STATUS:
                    raise FetchError(f"{url}: HTTP {status}", status, _text(response))
                last = f"HTTP {status}"
                wait = parse_retry_after(response.headers.get("Retry-After"))
            if attempt + 1 < self.policy.attempts:
                self._pause(attempt, wait, url, last)
        error = Unreachable if never_connected else FetchError
        raise error(f"{url}: gave up after {self.policy.attempts} attempts ({last})")

    def _pause(self, attempt: int, retry_after: float | None, url: str, why: str) -> None:
        delay = backoff_delay(attempt, self.policy, self._rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.policy.max_retry_after))
        logger.debug("retrying %s in %.2fs after %s", url, delay, why)
        self.retries += 1
        self._sleep(delay)

    def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET and decode JSON; a body that is not JSON counts as a transient failure once."""
        for attempt in range(2):
            response = self.get(url, params)
            try:
                return response.json()
            except ValueError as e:
                if attempt == 1:
                    raise FetchError(f"{url}: response is not JSON ({e})") from e
        raise AssertionError("unreachable")


def _text(response: httpx.Response) -> str:
    """The start of an error body, or "" for a streamed body left unread."""
    try:
        return response.text[:500]
    except httpx.ResponseNotRead:
        return ""


def _copy_capped(response: httpx.Response, sink: IO[bytes], max_bytes: int) -> None:
    """Write the body to `sink` chunk by chunk, refusing it as soon as it passes `max_bytes`."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RefusedError(f"{response.url}: {declared} bytes is over the {max_bytes}-byte cap")
    sink.seek(0)
    sink.truncate()
    read = 0
    for chunk in response.iter_bytes():
        read += len(chunk)
        if read > max_bytes:
            raise RefusedError(f"{response.url}: body over the {max_bytes}-byte cap")
        sink.write(chunk)
