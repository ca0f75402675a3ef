"""Connections to Qdrant: where a location points, retries with a total deadline, and redaction.

A location is one of:

* a folder: Qdrant's own engine embedded in the process (qdrant-edge, the default), or qdrant-client's local
  mode when ``engine="local"`` is asked for explicitly;
* ``":memory:"``: qdrant-client's in-memory mode (tests, notebooks);
* ``"http(s)://host:port"``: a Qdrant server or cluster, through qdrant-client.

Nothing here prints a credential: :func:`redact` removes user info and query strings from a URL before it
appears in any message, and server errors are reported by status code and reason, never by response body.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from crossgap_qdrant.store.errors import (
    InvalidRequestError,
    QdrantServerError,
    ServerAuthError,
    ServerUnreachableError,
)

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
ENGINES = ("edge", "local", "client")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of Qdrant server calls on transient errors, within a total deadline per operation.

    The wait before retry k (k = 1, 2, ...) is ``min(max_backoff, backoff * 2**(k-1))`` times a random factor
    in [0.5, 1]. Every call the store retries is idempotent (point ids are deterministic).

    Attributes:
        attempts: tries per operation (1: no retry).
        backoff, max_backoff: the wait before a retry, in seconds.
        deadline: total seconds one operation may take, all attempts and waits included; None: no limit
            beyond ``attempts`` times the client's request timeout. A call still running at the deadline is
            abandoned (its thread finishes on its own; writes are idempotent, so a late write is harmless).
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0
    deadline: float | None = 60.0

    def __post_init__(self):
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise InvalidRequestError(f"attempts must be an int >= 1, got {self.attempts!r}")
        if self.deadline is not None and not self.deadline > 0:
            raise InvalidRequestError(f"deadline must be > 0 seconds or None, got {self.deadline!r}")

    def delay(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (retry - 1)) * (0.5 + 0.5 * random.random())


def redact(location: str) -> str:
    """A location as it may appear in messages: no user, password, query string or fragment."""
    if "://" not in location:
        return location
    try:
        parts = urlsplit(location)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_server_location(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the server may answer the same request later."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in TRANSIENT_STATUS
    if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, httpx.TransportError):  # httpx: qdrant-client's HTTP transport
        return True
    code = getattr(exc, "code", None)  # grpc.RpcError, without importing grpc
    if callable(code):
        try:
            name = getattr(code(), "name", "")
        except Exception:
            return False
        return name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    return False


def _server_reason(exc: BaseException) -> str:
    """Qdrant's own one-line error ("status.error") of a refused request, without the rest of the body."""
    try:
        reason = exc.structured().get("status", {}).get("error", "")
    except Exception:
        return ""
    if not isinstance(reason, str) or not reason:
        return ""
    reason = " ".join(redact(w) if "://" in w else w for w in reason.split())
    return f": {reason[:200]}"


def describe_error(exc: BaseException) -> str:
    """A one-line description of a Qdrant error without response bodies or credentials."""
    if isinstance(exc, UnexpectedResponse):
        return f"HTTP {exc.status_code} {exc.reason_phrase}".strip() + _server_reason(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "://" in text:  # transport errors may quote the URL they tried
        text = " ".join(redact(word) if "://" in word else word for word in text.split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _run_with_timeout(fn: Callable[[], T], seconds: float) -> T:
    """Runs fn in a daemon thread; raises TimeoutError when it has not returned after ``seconds``."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="crossgap-qdrant-call")
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:.1f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_with_retries(
    what: str,
    fn: Callable[[], T],
    policy: RetryPolicy | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    enforce_deadline: bool = True,
) -> T:
    """Runs a Qdrant call, retrying transient errors until ``policy.attempts`` or ``policy.deadline``.

    Args:
        what: what the call does and where ("query points (http://host:6333)"), for the error message.
        policy: None runs fn once.
        enforce_deadline: run fn in a thread that is abandoned at the deadline (server calls); False for
            in-process engines, whose calls cannot hang on a network.

    Raises:
        ServerAuthError: the server refused the credentials (401/403; a PermissionError).
        QdrantServerError: the server refused the request otherwise (status and Qdrant's reason, no body).
        ServerUnreachableError: no answer after every attempt, or the deadline passed (a ConnectionError; the
            message names ``what``).
        Exception: a non-transient error, as raised by fn.
    """
    attempts = policy.attempts if policy is not None else 1
    deadline = policy.deadline if policy is not None else None
    start = clock()
    for attempt in range(1, attempts + 1):
        remaining = None if deadline is None else deadline - (clock() - start)
        try:
            if remaining is not None and enforce_deadline:
                return _run_with_timeout(fn, remaining)
            return fn()
        except Exception as exc:
            if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403):
                raise ServerAuthError(
                    f"could not {what}: the server refused the credentials ({describe_error(exc)}); check api_key"
                ) from None
            if not is_transient(exc):
                if isinstance(exc, UnexpectedResponse):
                    raise QdrantServerError(f"could not {what}: the server answered {describe_error(exc)}",
                                            exc.status_code) from None
                raise
            elapsed = clock() - start
            out_of_time = deadline is not None and elapsed >= deadline
            if attempt == attempts or out_of_time:
                limit = f"within the {deadline:g} s deadline" if out_of_time else f"after {attempt} attempt(s)"
                raise ServerUnreachableError(
                    f"could not {what}: no answer {limit} ({describe_error(exc)}). Check that the server runs "
                    "and that the URL, port and api_key are right; --timeout/--retries (RetryPolicy) set the limits."
                ) from None
            wait = policy.delay(attempt)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - elapsed))
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
