"""What the security overview (docs/topics/security.rst) says about ``DEBUG``, and that it is true.

Django masks the locals of ``sensitive_variables`` functions (and the POST parameters of
``sensitive_post_parameters`` views) in its error reports only while ``DEBUG`` is off. The
docs warn that ``DEBUG = True`` turns the masking off; this shows it on our own refresh
path: the same failure's error page hides the refresh token and the client secret with
``DEBUG = False`` and shows both with ``DEBUG = True``.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from django.views.debug import ExceptionReporter

from slice_connect import oauth
from slice_connect.exceptions import SliceConnectError
from tests.conftest import TOKEN_URL

SECURITY = Path(__file__).resolve().parent.parent / "docs" / "topics" / "security.rst"


def security_section() -> str:
    return SECURITY.read_text(encoding="utf-8")


def test_docs_say_debug_turns_the_masking_off() -> None:
    section = " ".join(security_section().split())
    assert "``DEBUG = True`` turns the masking off" in section
    assert "``sensitive_post_parameters``" in section


class Canaries:
    """The secrets of one test; its ``repr`` hides them (frames that hold it show only that)."""

    def __init__(self) -> None:
        self.client_secret = f"SECRET{secrets.token_hex(10)}"
        self.refresh_token = f"REFRESH{secrets.token_hex(10)}"

    def __repr__(self) -> str:
        return "<Canaries>"


def failure_of(call: Callable[[], Any]) -> Any:
    """Run ``call``; return the ``sys.exc_info()`` of the error it raised."""
    try:
        call()
    except SliceConnectError:
        return sys.exc_info()
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("debug", [False, True])
def test_debug_decides_whether_error_pages_show_our_secrets(settings: Any, debug: bool) -> None:
    canaries = Canaries()
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "CLIENT_SECRET": canaries.client_secret}
    settings.DEBUG = debug
    with responses.RequestsMock() as mock:
        mock.post(TOKEN_URL, body=requests.ConnectionError("connection reset"))
        exc_info = failure_of(lambda: oauth.refresh(canaries.refresh_token))
    page = ExceptionReporter(None, *exc_info).get_traceback_html()
    assert "post_token_request" in page  # the frame that holds the request body is shown
    shown = {
        name
        for name, value in [("refresh", canaries.refresh_token), ("secret", canaries.client_secret)]
        if value in page
    }
    assert shown == ({"refresh", "secret"} if debug else set())
