"""The one transport for every call to Slice: code exchange, refresh, revoke and the API.

Everything that can go wrong between us and Slice is decided here, once:

* **A wall-clock deadline per call.** ``requests`` only has per-``recv`` timeouts: a server
  that drips its status line, its headers or its body one byte at a time, each byte inside
  the read timeout, would hold a call (and a renewal's row lock) for ever. Our connection
  classes read the response through :class:`_DeadlineReader`, which gives every socket read
  at most the time left before the deadline. Connecting, the TLS handshake and sending the
  request are bounded by the connect timeout (CPython applies a socket timeout to a whole
  ``connect``, ``do_handshake`` and ``sendall``), so a call ends within its budget
  (``connect + read`` of ``HTTP_TIMEOUT``) plus a scheduling slack, whatever the server does.
  Name resolution (``getaddrinfo``) cannot be interrupted from Python and is not covered.
* **Content codings.** ``requests`` asks for gzip and deflate, and proxies compress unasked;
  bodies are decoded here, and the *decoded* bytes count against the size cap, read in
  bounded steps (urllib3 >= 2.6 decompresses at most what is asked for), so a compression
  bomb costs at most the cap.
* **A size cap on every body**, refused with :class:`ResponseTooLarge` without reading the
  rest.
* **One classification** of every failure: "never sent" (:class:`TransientError`, code
  ``connect_error``, or ``unencodable_request``), "sent, answer lost" (:class:`ResponseLost`,
  code ``timeout``, ``connection_error``, ``tls_error`` or ``decode_error``: Slice may have
  processed it), or "answered" (a :class:`requests.Response` whose body has been read,
  decoded and capped, or :class:`ResponseTooLarge`). Nothing else escapes: encoding errors,
  decoding errors and odd exceptions from the stack below are mapped too.
* **No redirects** are followed here; callers decide (the OAuth endpoints never follow one,
  the API client follows them only within the API origin).

We deliberately do not send token requests through requests-oauthlib's ``OAuth2Session``:
its token methods log the token response at DEBUG, follow its own error handling and cannot
express this taxonomy. It still builds the authorization URL (:mod:`slice_connect.oauth`).
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import io
import json
import logging
import math
import os
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests
from django.utils import timezone
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.ssl_match_hostname import CertificateError

from .exceptions import ResponseLost, ResponseTooLarge, TransientError

logger = logging.getLogger(__name__)

#: Bytes asked of the decoder per step: the most a compressed chunk can add before the cap
#: is checked again.
READ_STEP = 64 * 1024

#: When the current call must be over (``time.monotonic()``), for the reads below it.
_DEADLINE: ContextVar[float | None] = ContextVar("slice_connect_http_deadline", default=None)


class DeadlineExceeded(socket.timeout):
    """The call's wall-clock deadline passed while reading the answer."""


# -- the deadline, below requests ------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """The socket, read so that no read outlives the call's deadline.

    http.client reads the status line, the headers and the body through this (buffered);
    each ``recv`` waits at most ``min(read timeout, time left)``. It holds the socket like
    ``makefile`` does, so a connection closed by http.client (``Connection: close``) stays
    readable until the answer has been read.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._io = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        timeout = sock.gettimeout()
        self._read_timeout = math.inf if timeout is None else timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("The answer took longer than the call's deadline.")
        self._sock.settimeout(min(self._read_timeout, left))
        return self._io.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._io.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading through a :class:`_DeadlineReader` during a call."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = _DEADLINE.get()
        if deadline is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _HTTPConnection(HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """A requests adapter whose connections read every answer against the call's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = POOL_CLASSES
        return manager


def _keep_headers(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Auth hook that adds nothing: stops requests from applying ``~/.netrc`` credentials.

    With ``trust_env`` (kept for ``HTTPS_PROXY`` and ``REQUESTS_CA_BUNDLE``), requests
    would otherwise replace our ``Authorization`` header with one built from ``.netrc``.
    """
    return request


class _Session(requests.Session):
    """A session that reads the environment's settings once per origin, not on every call.

    ``trust_env`` stays on, so ``HTTPS_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE`` are
    honoured, but requests would look them up again (walking ``os.environ``) for every
    request: a large share of a token request's CPU. They are read when the session first
    calls an origin; a session lives as long as its thread's kept-alive connections.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], Any] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        if proxies:  # given for this call: nothing to remember
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = settings
        return dict(settings)


def new_session() -> requests.Session:
    """A :class:`requests.Session` whose every call is bounded by the call's deadline."""
    session = _Session()
    mount(session)
    return session


def mount(session: requests.Session) -> requests.Session:
    """Make ``session`` read its answers through the deadline-aware connections."""
    adapter = DeadlineAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


_local = threading.local()


def close_thread_session() -> None:
    """Close the calling thread's kept-alive OAuth connections (they reopen when needed)."""
    session = getattr(_local, "session", None)
    if session is not None:
        _local.session = None
        session.close()


def _oauth_session() -> requests.Session:
    """The calling thread's kept-alive session for the OAuth endpoints (new after a fork)."""
    session = getattr(_local, "session", None)
    if session is None or _local.pid != os.getpid():
        session = new_session()
        _local.session, _local.pid = session, os.getpid()
    return session


# -- classification --------------------------------------------------------------------


def _tls_error_before_sending(exc: BaseException) -> bool:
    """Whether a TLS error surely happened before the request was sent.

    A certificate that fails verification stops the handshake, so nothing was sent. Any
    other TLS error may have come after the request went out (a fatal alert, a corrupted
    record), so it counts as possibly processed.
    """
    error: object = exc.args[0] if exc.args else None
    for _ in range(4):  # requests SSLError -> MaxRetryError -> urllib3 SSLError -> ssl error
        if isinstance(error, (ssl.SSLCertVerificationError, CertificateError)):
            return True
        if isinstance(error, MaxRetryError):
            error = error.reason
        elif isinstance(error, Urllib3SSLError):
            error = error.args[0] if error.args else None
        else:
            break
    return isinstance(error, (ssl.SSLCertVerificationError, CertificateError))


def _definitely_not_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (connect-phase failure)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return _tls_error_before_sending(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False


#: Codes of the failures where Slice did not answer at all (never sent, or answer lost).
NO_ANSWER_CODES = frozenset(
    {"connect_error", "unencodable_request", "timeout", "connection_error", "tls_error"}
)

#: Refused while preparing the request, before anything went on the wire.
NOT_SENDABLE = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


#: What the HTTP stack raises for the network, the server or an unencodable request.
TRANSPORT_ERRORS = (
    requests.RequestException,
    Urllib3HTTPError,
    http.client.HTTPException,
    OSError,  # socket errors, timeouts and TLS errors urllib3 did not wrap
    UnicodeError,
    ValueError,  # http.client refuses a header with CR/LF, a bad URL, ...
)


def _classify(exc: BaseException, what: str) -> TransientError:
    """Map any failure of a call onto "never sent" or "sent, answer lost"."""
    kind = type(exc).__name__
    if isinstance(exc, requests.RequestException) and _definitely_not_sent(exc):
        if isinstance(exc, requests.exceptions.SSLError):
            logger.error("TLS verification of %s failed: the request was not sent.", what)
        logger.warning("%s: not sent (%s).", what, kind)
        return TransientError(f"Could not reach Slice ({kind}).", code="connect_error")
    if isinstance(exc, NOT_SENDABLE) or (
        isinstance(exc, UnicodeError | ValueError)
        and not isinstance(exc, requests.RequestException)
    ):
        # A header or URL that cannot be encoded: http.client refuses before sending.
        logger.warning("%s: not sent, the request could not be encoded (%s).", what, kind)
        return TransientError(
            "The request to Slice could not be encoded.", code="unencodable_request"
        )
    if isinstance(exc, requests.exceptions.SSLError | Urllib3SSLError):
        logger.error("TLS failure on %s after the request was sent.", what)
        code = "tls_error"
    elif isinstance(exc, requests.Timeout | ReadTimeoutError | socket.timeout):
        code = "timeout"
    elif isinstance(exc, requests.exceptions.ContentDecodingError | DecodeError):
        code = "decode_error"
    else:
        code = "connection_error"
    logger.warning("%s: sent, but no answer (%s).", what, kind)
    return ResponseLost(f"No usable answer from Slice ({kind}).", code=code)


# -- reading -----------------------------------------------------------------------------


def _read_body(response: requests.Response, limit: int) -> bytes:
    """Read, decode and cap the body; raise :class:`ResponseTooLarge` past ``limit``."""
    raw = response.raw
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = raw.read1(READ_STEP, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(
                    f"Slice's answer is larger than {limit} bytes; not read further.",
                    status_code=response.status_code,
                    limit=limit,
                )
            chunks.append(chunk)
    except ReadTimeoutError as exc:
        raise requests.ReadTimeout(exc) from None
    except Urllib3SSLError as exc:
        raise requests.exceptions.SSLError(exc) from None
    except ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from None
    except DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from None
    except Urllib3HTTPError as exc:
        raise requests.ConnectionError(exc) from None


@contextmanager
def _deadline(budget: float) -> Iterator[float]:
    deadline = time.monotonic() + budget
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def budget_of(timeout: tuple[float, float]) -> float:
    """The wall-clock budget of one call: connect plus read."""
    return float(timeout[0]) + float(timeout[1])


def send(
    method: str,
    url: str,
    *,
    timeout: tuple[float, float],
    limit: int,
    what: str,
    session: requests.Session | None = None,
    fresh: bool = False,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> requests.Response:
    """Send one request (no redirect followed) and return the answer, its body read.

    ``timeout`` is ``(connect, read)``; the whole call, body included, ends within
    ``connect + read`` seconds. ``limit`` caps the decoded body. ``what`` names the call in
    logs (never a URL with a secret in it). Raises :class:`TransientError` (never sent),
    :class:`ResponseLost` (sent, answer lost) or :class:`ResponseTooLarge`; any status code
    is returned as an answer. Without ``session``, OAuth calls share a kept-alive session per
    thread; ``fresh`` sends on a new connection, closed afterwards.
    """
    if fresh:
        with new_session() as own:
            return send(
                method,
                url,
                timeout=timeout,
                limit=limit,
                what=what,
                session=own,
                headers=headers,
                **kwargs,
            )
    session = session or _oauth_session()
    connect, read = timeout
    with _deadline(budget_of(timeout)):
        try:
            response = session.request(
                method,
                url,
                headers=dict(headers or {}),
                timeout=(connect, read),
                allow_redirects=False,
                stream=True,
                auth=_keep_headers,
                **kwargs,
            )
            with response:
                response._content = _read_body(response, limit)
        except ResponseTooLarge:
            logger.warning("%s: the answer exceeded %s bytes.", what, limit)
            raise
        except TRANSPORT_ERRORS as exc:
            # Everything the HTTP stack can raise for what the server or the network did
            # (socket errors urllib3 did not wrap, a header that cannot be encoded, ...) is
            # classified; a bug (TypeError, RuntimeError, ...) still surfaces as itself.
            raise _classify(exc, what) from None
    return response


def retry_after_seconds(response: requests.Response | httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP-date), or ``None``."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - timezone.now()).total_seconds())


def is_json_media_type(content_type: str) -> bool:
    """Whether a ``Content-Type`` names JSON (``application/json`` or ``+json``)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def decode_json(body: bytes) -> Any:
    """Decode a JSON body (UTF-8, a BOM tolerated); ``ValueError`` for anything unusable.

    Deeply nested documents raise ``RecursionError`` in :mod:`json`; that is a bad body
    too, never an escape from the error taxonomy.
    """
    try:
        return json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"Undecodable JSON ({type(exc).__name__}).") from None


# -- the same transport for async code (httpx) -----------------------------------------
#
# The design is the one above: one budget per call (here asyncio's own cancellation, which
# bounds connect, TLS, the status line, the headers and the body alike), bodies decoded by
# us in bounded steps and capped, the same classification, no redirects followed. httpx's
# own decoders inflate a whole network chunk at once (a 64 KiB chunk of a bomb is 64 MiB),
# so the raw bytes are decoded here, with zlib's max_length.

#: The content codings we ask for and decode (what requests asks for, too).
ACCEPT_ENCODING = "gzip, deflate"


class _BoundedDecoder:
    """Decode one content coding (gzip, deflate or none), at most ``room`` bytes a step."""

    #: zlib's ``wbits`` for each coding we decode (deflate falls back to raw, see decode).
    WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

    def __init__(self, encoding: str) -> None:
        codings = [c.strip().lower() for c in encoding.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) > 1 or not set(codings) <= set(self.WBITS):
            raise DecodeError(f"Unsupported content coding {encoding!r}.")
        self._coding = codings[0] if codings else ""
        self._inflater = zlib.decompressobj(self.WBITS[self._coding]) if codings else None
        self._first = True

    def decode(self, data: bytes, room: int) -> bytes:
        """Inflate ``data``; returns at most ``room`` bytes (``room`` means "over the cap")."""
        if self._inflater is None:
            return data[:room]
        out = b""
        pending = data
        try:
            while pending and len(out) < room:
                out += self._inflater.decompress(pending, room - len(out))
                pending = self._inflater.unconsumed_tail
        except zlib.error as exc:
            if not (self._first and self._coding == "deflate"):
                raise DecodeError(f"Undecodable {self._coding} body.") from exc
            # "deflate" is often sent raw, without the zlib wrapper RFC 9110 asks for.
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self._first = False
            return self.decode(data, room)
        self._first = False
        return out


_async_tls: ssl.SSLContext | None = None


async def new_async_client() -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the API: no proxies or ``.netrc`` from the environment.

    All of them share one TLS context. Building it loads the CA bundle (about 0.1 s of CPU),
    and httpx imports its connection stack (httpcore, anyio's asyncio backend: another
    0.1-0.2 s) on the first client and the first request, so the first call of a process
    does both in a worker thread, never on the event loop.
    """
    context = _async_tls if _async_tls is not None else await asyncio.to_thread(_build_async_tls)
    return httpx.AsyncClient(trust_env=False, verify=context)


_async_tls_lock = threading.Lock()


def _build_async_tls() -> ssl.SSLContext:
    """Build the shared TLS context once, however many coroutines ask at the same time."""
    global _async_tls
    with _async_tls_lock:
        if _async_tls is None:
            import anyio._backends._asyncio  # what the first request imports
            import anyio.streams.tls  # noqa: F401

            context = httpx.create_ssl_context()
            httpx.AsyncClient(verify=context)  # imports httpcore and h11
            _async_tls = context
        return _async_tls


#: httpx errors raised before anything was sent.
ASYNC_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.InvalidURL,
    httpx.ProxyError,
)


def _classify_async(exc: BaseException, what: str) -> TransientError:
    kind = type(exc).__name__
    if isinstance(exc, (*ASYNC_NOT_SENT, UnicodeError)):
        if isinstance(exc, httpx.ConnectError) and "CERTIFICATE" in str(exc).upper():
            logger.error("TLS verification of %s failed: the request was not sent.", what)
        logger.warning("%s: not sent (%s).", what, kind)
        code = "unencodable_request" if isinstance(exc, UnicodeError) else "connect_error"
        return TransientError(f"Could not reach Slice ({kind}).", code=code)
    if isinstance(exc, asyncio.TimeoutError | httpx.TimeoutException):
        code = "timeout"
    elif isinstance(exc, DecodeError | httpx.DecodingError):
        code = "decode_error"
    else:
        code = "connection_error"
    logger.warning("%s: sent, but no answer (%s).", what, kind)
    return ResponseLost(f"No usable answer from Slice ({kind}).", code=code)


async def _afetch(
    client: httpx.AsyncClient, method: str, url: str, limit: int, kwargs: dict[str, Any]
) -> httpx.Response:
    async with client.stream(method, url, **kwargs) as streamed:
        decoder = _BoundedDecoder(streamed.headers.get("Content-Encoding", ""))
        chunks: list[bytes] = []
        size = 0
        async for raw in streamed.aiter_raw():
            chunk = decoder.decode(raw, limit - size + 1)
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(
                    f"Slice's answer is larger than {limit} bytes; not read further.",
                    status_code=streamed.status_code,
                    limit=limit,
                )
            chunks.append(chunk)
    # The body as read and decoded here: what .content, .text and .json() give.
    streamed._content = b"".join(chunks)
    return streamed


async def asend(
    method: str,
    url: str,
    *,
    timeout: tuple[float, float],
    limit: int,
    what: str,
    client: httpx.AsyncClient,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """:func:`send` for async code, on an ``httpx.AsyncClient``; the same rules and errors."""
    connect, read = timeout
    kwargs.update(
        headers={**dict(headers or {}), "Accept-Encoding": ACCEPT_ENCODING},
        timeout=httpx.Timeout(read, connect=connect),
        follow_redirects=False,
    )
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(budget_of(timeout)):  # no extra task per call
                return await _afetch(client, method, url, limit, kwargs)
        return await asyncio.wait_for(  # pragma: no cover (Python 3.10)
            _afetch(client, method, url, limit, kwargs), budget_of(timeout)
        )
    except ResponseTooLarge:
        logger.warning("%s: the answer exceeded %s bytes.", what, limit)
        raise
    except (httpx.HTTPError, asyncio.TimeoutError, DecodeError, UnicodeError, OSError) as exc:
        raise _classify_async(exc, what) from None
