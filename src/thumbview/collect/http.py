"""HTTP GET with retries: exponential backoff with jitter, Retry-After honoured.

Thumbnail hosts and the Data API both answer 429/5xx under load and drop connections
mid-body; a million requests see every failure mode, so each one is retried a bounded
number of times and then reported, never retried forever.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "thumbview-collect/0.1 (+https://github.com/thumbview)"


class FetchError(RuntimeError):
    """A request failed for good; `status` is the last HTTP status (None for network errors)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class NotFoundError(FetchError):
    """404 / 410: the resource does not exist (a missing thumbnail size, a deleted video)."""


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
        last = "no attempt"
        for attempt in range(self.policy.attempts):
            wait: float | None = None
            try:
                response = self._client.get(url, params=params)
                response.read()  # a body cut short raises here, inside the retry loop
            except httpx.TransportError as e:  # timeouts, resets, truncated bodies
                last = f"{type(e).__name__}: {e}"
            else:
                status = response.status_code
                if status < 300:
                    return response
                if status in (404, 410):
                    raise NotFoundError(f"{url}: HTTP {status}", status, response.text[:500])
                if status not in RETRY_STATUS:
                    raise FetchError(f"{url}: HTTP {status}", status, response.text[:500])
                last = f"HTTP {status}"
                wait = parse_retry_after(response.headers.get("Retry-After"))
            if attempt + 1 < self.policy.attempts:
                self._pause(attempt, wait, url, last)
        raise FetchError(f"{url}: gave up after {self.policy.attempts} attempts ({last})")

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
