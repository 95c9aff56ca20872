"""SliceClient: calls to the Slice REST API on a user's behalf, renewing tokens itself."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.contrib.auth.models import AbstractBaseUser
from django.views.decorators.debug import sensitive_variables

from . import services
from .conf import app_settings
from .exceptions import ApiError, NeedsReauth, NotLinked, TransientError
from .fields import UnreadableToken
from .models import SliceCredential
from .oauth import read_body, retry_after_seconds

logger = logging.getLogger(__name__)

#: Collections that accept ``limit``/``offset``/``since``.
PAGED_COLLECTIONS = ("orders", "items", "shipments")
MAX_REDIRECTS = 3


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _total_seconds(timeout: Any) -> float:
    """connect + read of a requests ``timeout`` (one number is both); inf when unbounded."""
    parts = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    try:
        return sum(math.inf if part is None else float(part) for part in parts)
    except (TypeError, ValueError):
        return math.inf


class SliceClient:
    """Authorized access to ``API_BASE_URL`` for one user.

    ``SliceClient(user)`` or ``SliceClient(credential)``. Paths are relative to
    ``API_BASE_URL`` (absolute ``href`` values from Slice are accepted when they point at the
    same origin). The access token is renewed through :func:`services.renew` when it is about
    to expire, and once more if Slice answers 401.
    """

    def __init__(
        self,
        user_or_credential: AbstractBaseUser | SliceCredential | Any,
        *,
        session: requests.Session | None = None,
    ) -> None:
        if isinstance(user_or_credential, SliceCredential):
            self.credential = user_or_credential
        else:
            try:
                self.credential = SliceCredential.objects.get(user=user_or_credential)
            except SliceCredential.DoesNotExist:
                raise NotLinked("This user has not linked a Slice account.") from None
        self.session = session or requests.Session()
        # Redirects are handled here, so the bearer token never follows one off-origin.
        self.session.trust_env = False

    def __repr__(self) -> str:
        return f"<SliceClient credential={self.credential.pk}>"

    def __enter__(self) -> SliceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session's pooled connections."""
        self.session.close()

    # -- public API --------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send an authorized request and return the (successful) response."""
        url = self.url_for(path)
        self._ensure_fresh()
        response = self._send(method, url, **kwargs)
        if response.status_code == 401:
            # Slice may have revoked the access token early; renew once (unless a sibling
            # already did) and retry once. Never more: no loops.
            response.close()
            services.renew_with_result(self.credential, seen_version=self._used_version)
            response = self._send(method, url, **kwargs)
        self._raise_for_status(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params``; return the decoded JSON body."""
        return self._json(self.request("GET", path, params=params or None))

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        """POST a form-encoded body (Slice ignores JSON bodies); return the decoded JSON."""
        return self._json(self.request("POST", path, data=data))

    def iter_collection(
        self, resource: str, *, since: int | None = None, limit: int = 100, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield every row of ``orders``, ``items`` or ``shipments``, page by page.

        Pages until one returns fewer than ``limit`` rows, as Slice's docs describe.
        """
        if resource not in PAGED_COLLECTIONS:
            raise ValueError(f"{resource!r} is not one of {', '.join(PAGED_COLLECTIONS)}.")
        if not 0 < limit <= 1000:
            raise ValueError("limit must be between 1 and 1000.")
        offset = 0
        while True:
            query = dict(params, limit=limit, offset=offset)
            if since is not None:
                query["since"] = since
            body = self.get(resource, **query)
            rows = body.get("result") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise ApiError("Slice returned a page without a result list.", status_code=200)
            yield from rows
            if len(rows) < limit:
                return
            offset += len(rows)

    def url_for(self, path: str) -> str:
        """Resolve ``path`` against ``API_BASE_URL``; refuse URLs on any other origin."""
        base = app_settings.API_BASE_URL
        if path.startswith(("//", "\\")) or "\\" in path:
            raise ValueError("Refusing a scheme-relative or backslashed API path.")
        url = urljoin(base, path)
        if _origin(url) != _origin(base):
            raise ValueError("Refusing to send the Slice token to another origin.")
        return url

    # -- internals ---------------------------------------------------------------------

    def _ensure_fresh(self) -> None:
        credential = self.credential
        if not credential.is_active:
            raise NeedsReauth(
                "This Slice link needs the user to link again.", reason=credential.status_reason
            )
        if credential.access_token_expiring() or isinstance(
            credential.access_token, UnreadableToken
        ):
            services.renew(credential)

    @sensitive_variables()  # the token, the headers, and the HTTP stack's frames below
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        token = self.credential.access_token
        if not isinstance(token, str):
            services.renew(self.credential)
            token = self.credential.access_token
        self._used_version = self.credential.version
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = f"Bearer {token}"
        headers.setdefault("Accept", "application/json")
        if kwargs.get("timeout") is None:
            # Never without a timeout, even if a caller passes timeout=None.
            kwargs["timeout"] = app_settings.HTTP_TIMEOUT
        stream = kwargs.pop("stream", False)
        for _hop in range(MAX_REDIRECTS + 1):
            # The read timeout restarts with every byte; the body is read by this deadline.
            deadline = time.monotonic() + _total_seconds(kwargs["timeout"])
            try:
                response = self.session.request(
                    method, url, headers=headers, allow_redirects=False, stream=True, **kwargs
                )
                if not stream and not response.is_redirect:
                    try:
                        response._content = read_body(response, deadline)
                    except requests.RequestException:
                        response.close()
                        raise
            except requests.RequestException as exc:
                if isinstance(exc, requests.exceptions.SSLError):
                    logger.error("TLS failure on the Slice API (%s).", type(exc).__name__)
                code = "timeout" if isinstance(exc, requests.Timeout) else "connection_error"
                raise TransientError(
                    f"Slice API unreachable ({type(exc).__name__}).", code=code
                ) from None
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers.get("Location", ""))
            response.close()
            if _origin(target) != _origin(app_settings.API_BASE_URL):
                raise ApiError(
                    "Slice redirected to another origin; not followed.",
                    status_code=response.status_code,
                    code="redirect_off_origin",
                )
            url = target
            if response.status_code == 303:
                method = "GET"
                kwargs.pop("data", None)
        raise ApiError("Too many redirects.", status_code=response.status_code, code="redirects")

    @staticmethod
    def _raise_for_status(response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        if status == 429 or status >= 500:
            raise TransientError(
                f"Slice API answered HTTP {status}.",
                code=f"http_{status}",
                retry_after=retry_after_seconds(response),
            )
        raise ApiError(f"Slice API answered HTTP {status}.", status_code=status)

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ApiError("Slice API answered with invalid JSON.", status_code=200) from None
