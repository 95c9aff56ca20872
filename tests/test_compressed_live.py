"""The whole life of a link against the real sandbox while it compresses its answers.

A CDN, nginx with ``gzip on`` or a proxy may compress Slice's JSON, asked or not
(docs/threat-model.rst R40). The sandbox's ``COMPRESS`` setting does the same to the real
OAuth server (django-oauth-toolkit, strict rotation, no grace period): link through the
consent page, call the API, renew twice, unlink with revocation. ``.ci/run`` also runs every
live test with ``SLICE_CONNECT_TEST_COMPRESS=gzip``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from slice_connect import services
from slice_connect.client import SliceClient
from slice_connect.models import SliceCredential

from .flow import link

pytestmark = pytest.mark.django_db(transaction=True)


class EncodingSeen:
    """Records the ``Content-Encoding`` of every answer our transport reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.encodings: list[tuple[str, str]] = []
        real = requests.Session.request

        def spy(session: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
            response = real(session, method, url, **kwargs)
            path = urlsplit(url).path  # never the query: the callback's carries the code
            if path.startswith(("/oauth/token", "/oauth/revoke", "/api/")):
                self.encodings.append((path, response.headers.get("Content-Encoding", "")))
            return response

        monkeypatch.setattr(requests.Session, "request", spy)


@pytest.mark.parametrize("mode", ["django", "gzip", "deflate"])
def test_link_renew_call_unlink_with_compressed_answers(
    mode: str,
    slice_server: Any,
    settings: Any,
    user: Any,
    browser_session: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from oauth2_provider.models import RefreshToken

    settings.SLICE_SANDBOX = {**settings.SLICE_SANDBOX, "COMPRESS": mode, "GRACE_SECONDS": 0}
    seen = EncodingSeen(monkeypatch)
    session = browser_session(user)
    assert link(session, slice_server.url).status_code == 302
    credential = SliceCredential.objects.get(user=user)

    body = SliceClient(user).get("users/self")
    assert "result" in body
    for _ in range(2):
        services.renew(credential, force=True)
    assert credential.version == 3 and credential.is_active
    assert slice_server.token_requests("refresh_token") == 2

    live = str(credential.refresh_token)
    services.unlink(credential)
    assert not SliceCredential.objects.filter(user=user).exists()
    assert RefreshToken.objects.get(token=live).revoked is not None  # revoked at Slice

    paths = {path for path, _encoding in seen.encodings}
    assert {"/oauth/token", "/oauth/revoke", "/api/v1/users/self"} <= paths
    encodings = {encoding for _path, encoding in seen.encodings}
    if mode == "django":
        # Django's GZipMiddleware compresses what is asked for and 200 bytes or longer.
        assert "gzip" in encodings
    else:
        assert encodings == {mode}, seen.encodings
