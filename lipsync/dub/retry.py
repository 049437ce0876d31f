"""Retry transient storage errors with exponential backoff; fail fast on permanent ones.

A dub runs for days against object storage: a dropped connection, a timeout or an S3 "SlowDown"
/ 5xx must not fail an item that would succeed a few seconds later. A missing file, a refused
credential or bad media will not get better, so those fail at once (retrying them only delays
the one-line reason). The plan, render and stitch steps of cluster/dub.py run their work
through `call_with_retries` inside their Ray task or actor.

Classification (`is_transient`):
  permanent  InputError (and MediaError, ...), FileNotFoundError, PermissionError, the other
             "this path is wrong" OSErrors (IsADirectory, NotADirectory, FileExists), OSErrors
             whose errno says the request itself is wrong (EINVAL, ENOSYS, EPERM, ... as s3fs
             translates 4xx answers), ValueError, TypeError and anything else not listed below
  transient  other OSErrors (ConnectionError, TimeoutError, EIO, s3fs's EBUSY for SlowDown /
             503 and EREMOTEIO for 500), botocore's connection and timeout errors, botocore
             ClientErrors with a 5xx / throttling code, aiohttp's connection and payload errors

Delays are RETRY_BASE_DELAY_S * 2**n (capped at RETRY_MAX_DELAY_S), each scaled by a random
factor in [0.5, 1] so that many workers hitting one endpoint do not retry in lockstep. The
module constants are read at every call (tests and operators may change them).
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Callable, TypeVar

from lipsync.errors import InputError

T = TypeVar("T")

RETRY_ATTEMPTS = 4  # tries in all (1 + 3 retries)
RETRY_BASE_DELAY_S = 0.5  # first wait
RETRY_MAX_DELAY_S = 8.0  # cap of one wait

logger = logging.getLogger(__name__)

PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    InputError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
    ValueError, TypeError, KeyError, NotImplementedError,
)
# errno values of OSErrors that describe the request, not the weather (s3fs maps 4xx answers
# to these; local ones: no space, read-only filesystem, name too long).
PERMANENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EINVAL", "ENOSYS", "EPERM", "EACCES", "ENOENT", "EEXIST", "EISDIR", "ENOTDIR", "ENOTEMPTY",
        "ENAMETOOLONG", "EMSGSIZE", "EREMCHG", "EROFS", "ENOSPC", "EDQUOT", "EFBIG", "ELOOP", "EXDEV",
    ) if hasattr(errno, name)
)
TRANSIENT_CLIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "500", "502", "503", "504",
})


def is_transient(error: BaseException) -> bool:
    """True when retrying the same call may succeed (see the module docstring)."""
    if isinstance(error, PERMANENT_TYPES):
        return False
    if isinstance(error, OSError):  # ConnectionError, TimeoutError (asyncio's too), s3fs's translations
        return error.errno not in PERMANENT_ERRNOS
    return _is_transient_botocore(error) or _is_transient_aiohttp(error)


def _is_transient_botocore(error: BaseException) -> bool:
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - s3fs depends on it
        return False
    if isinstance(error, (bx.ConnectionError, bx.HTTPClientError, bx.ConnectionClosedError)):
        return True  # EndpointConnectionError, Read/ConnectTimeoutError, ...
    if isinstance(error, bx.ClientError):
        response = getattr(error, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in TRANSIENT_CLIENT_CODES or status >= 500 or status == 429
    return False


def _is_transient_aiohttp(error: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - s3fs depends on it
        return False
    if isinstance(error, aiohttp.ClientResponseError):
        return error.status >= 500 or error.status == 429
    return isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def backoff_delays(attempts: int, base_s: float, max_s: float, rng: Callable[[], float] = random.random
                   ) -> list[float]:
    """The waits between `attempts` tries: base * 2**n, capped, times a factor in [0.5, 1]."""
    return [min(max_s, base_s * 2 ** n) * (0.5 + 0.5 * rng()) for n in range(max(attempts - 1, 0))]


def call_with_retries(fn: Callable[[], T], *, what: str = "", attempts: int | None = None,
                      base_delay_s: float | None = None, max_delay_s: float | None = None,
                      sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random,
                      transient: Callable[[BaseException], bool] = is_transient) -> T:
    """`fn()`, tried again after a transient error (up to `attempts` tries in all); re-raises the last.

    Permanent errors propagate at once. `what` names the work in the log line of each retry.
    """
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    delays = backoff_delays(attempts, RETRY_BASE_DELAY_S if base_delay_s is None else base_delay_s,
                            RETRY_MAX_DELAY_S if max_delay_s is None else max_delay_s, rng)
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            if attempt == attempts - 1 or not transient(e):
                raise
            logger.warning("%s: transient %s: %s; retry %d/%d in %.1f s", what or "storage", type(e).__name__,
                           " ".join(str(e).split())[:300], attempt + 1, attempts - 1, delays[attempt])
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover
