"""Drive the link flow over real HTTP, as a browser would, against the sandbox."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import requests


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": {}, "buttons": {}})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            if tag == "button" or a.get("type") == "submit":
                self.forms[-1]["buttons"][a["name"]] = a.get("value", "")
            elif a.get("type") != "checkbox" or "checked" in a:
                self.forms[-1]["fields"][a["name"]] = a.get("value", "")


def forms_in(html: str) -> list[dict[str, Any]]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def start_link(session: requests.Session, base: str, next_url: str | None = None) -> str:
    """GET and POST our authorize view; return the Slice authorization URL it redirects to."""
    page = session.get(f"{base}/slice/authorize/", timeout=10)
    assert page.status_code == 200, page.status_code
    data = {"csrfmiddlewaretoken": csrf_token(page.text)}
    if next_url:
        data["next"] = next_url
    response = session.post(
        f"{base}/slice/authorize/",
        data=data,
        headers={"Referer": f"{base}/slice/authorize/"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.status_code
    return response.headers["Location"]


def consent(session: requests.Session, authorize_url: str, *, allow: bool) -> str:
    """Answer the sandbox's consent page; return the callback URL Slice redirects to."""
    page = session.get(authorize_url, timeout=10, allow_redirects=False)
    assert page.status_code == 200, (page.status_code, page.text[:500])
    form = next(f for f in forms_in(page.text) if "redirect_uri" in f["fields"])
    data = dict(form["fields"])
    if allow:
        data["allow"] = "Authorize"
    action = form["action"] or authorize_url
    if action.startswith("/"):
        action = authorize_url.split("/oauth/")[0] + action
    response = session.post(
        action, data=data, headers={"Referer": authorize_url}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 302, (response.status_code, response.text[:500])
    return response.headers["Location"]


def link(session: requests.Session, base: str, next_url: str | None = None) -> requests.Response:
    """The whole flow; returns the callback's response (not followed)."""
    callback = consent(session, start_link(session, base, next_url), allow=True)
    return session.get(callback, allow_redirects=False, timeout=30)
