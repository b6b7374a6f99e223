"""Riding out a passing fault of the object store: which failures to wait through, for how long,
and what the run says meanwhile.

A run lasts days; in that time the store refuses connections while it restarts, resets them,
times out, answers 5xx or throttles (503 SlowDown). Such a failure of a read, download or
listing is retried with exponential backoff (0.5 s doubling up to 30 s) until
``data.store_retry_seconds`` have passed since the first failure; each wait prints one line
naming the URL, the failure and how long it has waited, and the seconds waited are counted for
TensorBoard (``data/store_wait_seconds``: the training chunks are downloaded by the main
process, which logs them). Past the limit the run ends in one paragraph with the command that
resumes it. A failure that waiting cannot cure (no such bucket or object, refused credentials)
is raised at once. One attempt is bounded by the client's own timeouts and retries
(``sprout.data.store.client``).
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sprout.errors import SproutError

DEFAULT_SECONDS = 300.0
_FIRST_WAIT, _LONGEST_WAIT = 0.5, 30.0
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "500",
    "502",
    "503",
    "504",
}
# in the messages of obstore's errors (one GenericError type for every HTTP failure) and of OSErrors
_TRANSIENT_TEXT = (
    "error sending request",
    "connection refused",
    "connection reset",
    "connection closed",
    "broken pipe",
    "timed out",
    "body error",
    "status code: 5",
    "status code: 429",
    "slowdown",
    "slow down",
    "service unavailable",
)
T = TypeVar("T")
_waited = [0.0]  # seconds waited in this process (any thread) since the last ``take_waited``
_waited_lock = threading.Lock()


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def transient(err: BaseException) -> bool:
    """Whether waiting may cure ``err`` (or an error it was raised from)."""
    from botocore import exceptions as bex

    for e in _chain(err):
        if isinstance(e, SproutError):
            return False
        if isinstance(e, bex.ClientError):
            error = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return str(error.get("Code", "")) in _TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(e, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return False
        if isinstance(
            e,
            (
                bex.EndpointConnectionError,
                bex.ConnectTimeoutError,
                bex.ReadTimeoutError,
                bex.ConnectionClosedError,
                ConnectionError,
                TimeoutError,
            ),
        ):
            return True
        if type(e).__module__.startswith("obstore") and any(t in str(e).lower() for t in _TRANSIENT_TEXT):
            return True
    return False


def describe(err: BaseException) -> str:
    """The failure in one short line: the innermost error's type and the first line of its message."""
    inner = list(_chain(err))[-1]
    first = (str(inner).strip().splitlines() or [""])[0]
    first = first if len(first) <= 200 else first[:200] + "..."
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def then_resume() -> str:
    """How to carry on once the store is back: for a training run, its command with ``--ckpt_path last``."""
    args = sys.argv[1:]
    if args[:1] != ["fit"]:
        return "run the same command again"
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        else:
            kept.append(arg)
    return f"resume from the last checkpoint with: {shlex.join(['sprout', *kept, '--ckpt_path', 'last'])}"


def take_waited() -> float:
    """Seconds this process waited for the store since the last call (its threads' waits added up)."""
    with _waited_lock:
        waited, _waited[0] = _waited[0], 0.0
    return waited


def patiently(url: str, what: str, seconds: float, call: Callable[[], T]) -> T:
    """``call()``, retried through transient failures for up to ``seconds`` since the first."""
    start, pause = None, _FIRST_WAIT
    while True:
        try:
            result = call()
        except Exception as err:
            if not transient(err):
                raise
            now = time.monotonic()
            start = now if start is None else start
            if now - start >= seconds:
                raise SproutError(
                    f"The object store at {url} did not answer for {now - start:.0f} s ({what}: {describe(err)}; "
                    f"data.store_retry_seconds={seconds:g}). What was written so far is intact. Check that the store is up and "
                    f"reachable (AWS_ENDPOINT_URL, the network), then {then_resume()}."
                ) from None
            print(
                f"sprout: waiting for the object store at {url} ({what}: {describe(err)}): {now - start:.0f} s so far, "
                f"retrying for up to data.store_retry_seconds={seconds:g}",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(max(min(pause, seconds - (now - start)), 0.0))
            pause = min(2 * pause, _LONGEST_WAIT)
            continue
        if start is not None:
            with _waited_lock:
                _waited[0] += time.monotonic() - start
            print(
                f"sprout: the object store answers again: {url} after {time.monotonic() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        return result
