"""The sandbox over real HTTP (pytest-django's live_server + requests)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from html.parser import HTMLParser
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import time_machine
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import identify_hasher
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import AccessToken, Grant, RefreshToken, get_application_model

from example_project.slice_sandbox.checks import check_sandbox_settings
from example_project.slice_sandbox.conf import (
    DEFAULTS,
    VALIDATOR_CLASS,
    oauth2_provider_settings,
    sandbox_setting,
)
from example_project.slice_sandbox.data import ORDER_COUNT, SHIPMENT_STATUSES
from example_project.slice_sandbox.models import TokenRequest
from example_project.slice_sandbox.setup import ensure_application

CLIENT_ID = "slice-connect-tests"
CLIENT_SECRET = "plaintext-client-secret-for-tests"
STATE = "state-1234"
TIMEOUT = 10

pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers -----------------------------------------------------------------------------


class FormParser(HTMLParser):
    """Collects the inputs and buttons of the consent form."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.buttons: list[str] = []
        self.title = ""
        self._in_title = False
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "input" and attributes.get("name"):
            self.fields[attributes["name"]] = attributes.get("value", "")
        self._in_title = tag == "title"
        self._in_button = tag == "button"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = self._in_button = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._in_button and data.strip():
            self.buttons.append(data.strip())


def parse_page(html: str) -> FormParser:
    parser = FormParser()
    parser.feed(html)
    return parser


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def query_of(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


class Sandbox:
    """Drives the sandbox like the Slice Connect client (and its user's browser) would."""

    def __init__(self, base_url: str, browser: requests.Session) -> None:
        self.base_url = base_url
        self.browser = browser
        self.redirect_uri = f"{base_url}/callback"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def authorize_params(self, challenge: str | None, state: str = STATE) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": self.redirect_uri,
            "state": state,
        }
        if challenge is not None:
            params.update(code_challenge=challenge, code_challenge_method="S256")
        return params

    def consent_page(self, challenge: str | None) -> requests.Response:
        return self.browser.get(
            self.url("/oauth/authorize"),
            params=self.authorize_params(challenge),
            allow_redirects=False,
            timeout=TIMEOUT,
        )

    def decide(self, page: requests.Response, allow: bool) -> requests.Response:
        fields = parse_page(page.text).fields
        if allow:
            fields["allow"] = "Allow"
        else:
            fields["deny"] = "Deny"
        return self.browser.post(
            page.url,
            data=fields,
            headers={"Referer": page.url},
            allow_redirects=False,
            timeout=TIMEOUT,
        )

    def get_code(self, challenge: str | None) -> str:
        page = self.consent_page(challenge)
        assert page.status_code == 200, page.text
        response = self.decide(page, allow=True)
        assert response.status_code == 302, response.text
        params = query_of(response.headers["Location"])
        assert params["state"] == STATE
        return params["code"]

    def token(self, **data: str) -> requests.Response:
        body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **data}
        return requests.post(self.url("/oauth/token"), data=body, timeout=TIMEOUT)

    def exchange(self, code: str, verifier: str | None) -> requests.Response:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri}
        if verifier is not None:
            data["code_verifier"] = verifier
        return self.token(**data)

    def refresh(self, refresh_token: str) -> requests.Response:
        return self.token(grant_type="refresh_token", refresh_token=refresh_token)

    def connect(self) -> dict[str, Any]:
        verifier, challenge = pkce_pair()
        response = self.exchange(self.get_code(challenge), verifier)
        assert response.status_code == 200, response.text
        return response.json()

    def api(self, path: str, token: str | None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url(path), params=params, headers=headers, timeout=TIMEOUT)


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user(
        "ada", "ada@example.com", "correct horse", first_name="Ada", last_name="Lovelace"
    )


@pytest.fixture
def application(live_server: Any) -> Any:
    return ensure_application(CLIENT_ID, CLIENT_SECRET, [f"{live_server.url}/callback"])


@pytest.fixture
def browser() -> Iterator[requests.Session]:
    # Closed explicitly: a kept-alive connection outlives the test otherwise.
    with requests.Session() as session:
        yield session


@pytest.fixture
def sandbox(live_server: Any, application: Any, user: Any, browser: requests.Session) -> Sandbox:
    client = Client()
    client.force_login(user)
    browser.cookies.set(
        django_settings.SESSION_COOKIE_NAME,
        client.cookies[django_settings.SESSION_COOKIE_NAME].value,
    )
    return Sandbox(live_server.url, browser)


@pytest.fixture
def tokens(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.connect()


# --- authorization endpoint --------------------------------------------------------------


def test_consent_page(sandbox: Sandbox) -> None:
    page = sandbox.consent_page(pkce_pair()[1])

    assert page.status_code == 200
    parsed = parse_page(page.text)
    assert parsed.title == "Slice sandbox — authorize Slice Connect"
    assert parsed.buttons == ["Deny", "Allow"]
    for name in ("client_id", "redirect_uri", "state", "code_challenge", "csrfmiddlewaretoken"):
        assert parsed.fields[name]


def test_authorize_requires_login_then_returns(
    live_server: Any, application: Any, user: Any, browser: requests.Session
) -> None:
    sandbox = Sandbox(live_server.url, browser)
    url = sandbox.url("/oauth/authorize")
    params = sandbox.authorize_params(pkce_pair()[1])

    first = sandbox.browser.get(url, params=params, allow_redirects=False, timeout=TIMEOUT)
    assert first.status_code == 302
    assert urlsplit(first.headers["Location"]).path == "/accounts/login/"

    login_page = sandbox.browser.get(sandbox.url(first.headers["Location"]), timeout=TIMEOUT)
    assert "Slice sandbox — sign in" in login_page.text
    fields = parse_page(login_page.text).fields
    fields.update(username="ada", password="correct horse")
    consent = sandbox.browser.post(login_page.url, data=fields, timeout=TIMEOUT)

    assert consent.status_code == 200
    assert urlsplit(consent.url).path == "/oauth/authorize"
    assert parse_page(consent.text).buttons == ["Deny", "Allow"]


def test_deny_redirects_with_access_denied(sandbox: Sandbox) -> None:
    page = sandbox.consent_page(pkce_pair()[1])
    response = sandbox.decide(page, allow=False)

    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(sandbox.redirect_uri + "?")
    params = query_of(location)
    assert params["error"] == "access_denied"
    assert params["state"] == STATE
    assert "code" not in params
    assert not Grant.objects.exists()


def test_unknown_redirect_uri_is_not_followed(sandbox: Sandbox) -> None:
    params = sandbox.authorize_params(pkce_pair()[1])
    params["redirect_uri"] = "https://attacker.example/callback"
    response = sandbox.browser.get(
        sandbox.url("/oauth/authorize"), params=params, allow_redirects=False, timeout=TIMEOUT
    )

    assert response.status_code == 400
    assert "Authorization failed" in response.text


def test_pkce_is_required_by_default(sandbox: Sandbox) -> None:
    response = sandbox.consent_page(challenge=None)

    assert response.status_code == 302
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_pkce_requirement_follows_sandbox_setting(sandbox: Sandbox, settings: Any) -> None:
    settings.SLICE_SANDBOX = {"PKCE_REQUIRED": False}

    response = sandbox.exchange(sandbox.get_code(challenge=None), verifier=None)

    assert response.status_code == 200, response.text


def test_wrong_code_verifier_is_rejected(sandbox: Sandbox) -> None:
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()

    response = sandbox.exchange(sandbox.get_code(challenge), other_verifier)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


# --- token endpoint ----------------------------------------------------------------------


def test_code_exchange_returns_slice_token_response(sandbox: Sandbox) -> None:
    verifier, challenge = pkce_pair()
    code = sandbox.get_code(challenge)

    response = sandbox.exchange(code, verifier)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"]
    assert body["refresh_token"]
    assert response.headers["Cache-Control"] == "no-store"
    # Codes are single use.
    again = sandbox.exchange(code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_code_older_than_60_seconds_is_rejected(sandbox: Sandbox) -> None:
    verifier, challenge = pkce_pair()
    code = sandbox.get_code(challenge)

    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        response = sandbox.exchange(code, verifier)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_code_lifetime_follows_sandbox_setting(sandbox: Sandbox, settings: Any) -> None:
    settings.SLICE_SANDBOX = {"CODE_SECONDS": 5}
    verifier, challenge = pkce_pair()
    code = sandbox.get_code(challenge)

    grant = Grant.objects.get(code=code)
    assert grant.expires - grant.created < timedelta(seconds=6)
    with time_machine.travel(timezone.now() + timedelta(seconds=6)):
        response = sandbox.exchange(code, verifier)
    assert response.json()["error"] == "invalid_grant"


def test_client_secret_in_form_body_is_checked(sandbox: Sandbox) -> None:
    verifier, challenge = pkce_pair()
    code = sandbox.get_code(challenge)

    response = sandbox.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri=sandbox.redirect_uri,
        code_verifier=verifier,
        client_secret="wrong",
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    # The code survives a failed client authentication.
    assert sandbox.exchange(code, verifier).status_code == 200


def test_refresh_rotates_and_old_token_dies(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    first = sandbox.refresh(tokens["refresh_token"])
    assert first.status_code == 200, first.text
    rotated = first.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["access_token"] != tokens["access_token"]
    assert rotated["expires_in"] == 3600

    replay = sandbox.refresh(tokens["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"

    # DOT revokes the access token issued with a rotated refresh token.
    assert sandbox.api("/api/v1/users/self", tokens["access_token"]).status_code == 401
    assert sandbox.api("/api/v1/users/self", rotated["access_token"]).status_code == 200
    assert sandbox.refresh(rotated["refresh_token"]).status_code == 200


def test_token_requests_are_logged_without_secrets(
    sandbox: Sandbox, tokens: dict[str, Any]
) -> None:
    rotated = sandbox.refresh(tokens["refresh_token"]).json()
    sandbox.refresh(tokens["refresh_token"])  # replay -> invalid_grant
    sandbox.token(grant_type="password", username="ada", password="correct horse")

    rows = list(TokenRequest.objects.values_list("grant_type", "status_code", "error"))
    assert rows == [
        ("authorization_code", 200, ""),
        ("refresh_token", 200, ""),
        ("refresh_token", 400, "invalid_grant"),
        ("password", 400, "unsupported_grant_type"),
    ]
    assert TokenRequest.objects.refreshes().count() == 2
    assert TokenRequest.objects.refreshes().failed().get().error == "invalid_grant"
    assert set(TokenRequest.objects.values_list("client_id", flat=True)) == {CLIENT_ID}
    stored = " ".join(str(value) for row in TokenRequest.objects.values_list() for value in row)
    for secret in (CLIENT_SECRET, tokens["refresh_token"], rotated["access_token"]):
        assert secret not in stored


def test_refresh_token_has_absolute_lifetime(sandbox: Sandbox, settings: Any) -> None:
    lifetime = timedelta(seconds=DEFAULTS["REFRESH_TOKEN_SECONDS"])
    start = timezone.now()
    kept = sandbox.connect()
    idle = sandbox.connect()

    # Just before the deadline: still valid; the new token's clock starts now.
    with time_machine.travel(start + lifetime - timedelta(seconds=30)):
        renewed = sandbox.refresh(kept["refresh_token"])
        assert renewed.status_code == 200, renewed.text
    # At the deadline the untouched token is dead, though DOT alone (which slides the
    # window from the access token's expiry) would still accept it for another hour.
    with time_machine.travel(start + lifetime + timedelta(seconds=1)):
        expired = sandbox.refresh(idle["refresh_token"])
        assert expired.status_code == 400
        assert expired.json()["error"] == "invalid_grant"
        assert sandbox.refresh(renewed.json()["refresh_token"]).status_code == 200


def test_refresh_lifetime_is_read_live(sandbox: Sandbox, settings: Any) -> None:
    tokens = sandbox.connect()
    settings.SLICE_SANDBOX = {"REFRESH_TOKEN_SECONDS": 5}

    with time_machine.travel(timezone.now() + timedelta(seconds=6)):
        response = sandbox.refresh(tokens["refresh_token"])

    assert response.json()["error"] == "invalid_grant"


def test_refresh_lifetime_counts_from_created(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    lifetime = timedelta(seconds=DEFAULTS["REFRESH_TOKEN_SECONDS"])
    RefreshToken.objects.update(created=timezone.now() - lifetime)

    response = sandbox.refresh(tokens["refresh_token"])

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_grace_period_replays_the_same_rotation(sandbox: Sandbox, settings: Any) -> None:
    settings.OAUTH2_PROVIDER = oauth2_provider_settings(GRACE_SECONDS=30)
    tokens = sandbox.connect()

    rotated = sandbox.refresh(tokens["refresh_token"]).json()
    retried = sandbox.refresh(tokens["refresh_token"])

    assert retried.status_code == 200
    assert retried.json()["refresh_token"] == rotated["refresh_token"]
    assert retried.json()["access_token"] == rotated["access_token"]
    with time_machine.travel(timezone.now() + timedelta(seconds=31)):
        assert sandbox.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("delay", [0, 0.3])
def test_concurrent_refreshes_with_one_token(sandbox: Sandbox, settings: Any, delay: float) -> None:
    settings.SLICE_SANDBOX = {"TOKEN_DELAY_SECONDS": delay}
    tokens = sandbox.connect()

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda _: sandbox.refresh(tokens["refresh_token"]), range(4)))

    # Exactly one wins; the others see a dead token, never the winner's new pair.
    assert sorted(r.status_code for r in responses) == [200, 400, 400, 400]
    assert {r.json().get("error") for r in responses if r.status_code == 400} == {"invalid_grant"}
    assert TokenRequest.objects.refreshes().count() == 4
    assert TokenRequest.objects.refreshes().succeeded().count() == 1


def test_access_token_lifetime_is_read_live(sandbox: Sandbox, settings: Any) -> None:
    settings.SLICE_SANDBOX = {"ACCESS_TOKEN_SECONDS": 30}
    tokens = sandbox.connect()

    assert tokens["expires_in"] == 30
    with time_machine.travel(timezone.now() + timedelta(seconds=31)):
        assert sandbox.api("/api/v1/users/self", tokens["access_token"]).status_code == 401
    assert sandbox.refresh(tokens["refresh_token"]).json()["expires_in"] == 30


def test_token_delay_slows_refreshes_only(sandbox: Sandbox, settings: Any) -> None:
    settings.SLICE_SANDBOX = {"TOKEN_DELAY_SECONDS": 2}
    started = time.monotonic()
    tokens = sandbox.connect()
    connected = time.monotonic()
    assert sandbox.refresh(tokens["refresh_token"]).status_code == 200
    refreshed = time.monotonic()

    assert connected - started < 2
    assert refreshed - connected >= 2


def test_revoke_refresh_token(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    response = requests.post(
        sandbox.url("/oauth/revoke"),
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
        timeout=TIMEOUT,
    )

    assert response.status_code == 200
    assert sandbox.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert sandbox.api("/api/v1/users/self", tokens["access_token"]).status_code == 401


def test_paths_have_no_trailing_slash(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    assert reverse("sandbox-token") == "/oauth/token"
    assert reverse("sandbox-order", args=[-5441729090682611070]) == (
        "/api/v1/orders/-5441729090682611070"
    )
    response = requests.post(sandbox.url("/oauth/token/"), data={}, timeout=TIMEOUT)
    assert response.status_code == 404
    assert sandbox.api("/api/v1/orders/", tokens["access_token"]).status_code == 404


# --- REST API ----------------------------------------------------------------------------


def test_api_requires_bearer_token(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    missing = sandbox.api("/api/v1/users/self", token=None)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith('Bearer realm="Slice sandbox"')
    assert 'error="invalid_token"' in missing.headers["WWW-Authenticate"]
    assert missing.json()["error"] == "invalid_token"

    bogus = sandbox.api("/api/v1/orders", token="not-a-token")
    assert bogus.status_code == 401
    assert 'error="invalid_token"' in bogus.headers["WWW-Authenticate"]

    in_query = requests.get(
        sandbox.url("/api/v1/users/self"),
        params={"access_token": tokens["access_token"]},
        timeout=TIMEOUT,
    )
    assert in_query.status_code == 401

    with time_machine.travel(timezone.now() + timedelta(seconds=3601)):
        expired = sandbox.api("/api/v1/users/self", tokens["access_token"])
    assert expired.status_code == 401
    assert "expired" in expired.headers["WWW-Authenticate"]


def test_users_self(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    before = int(time.time() * 1000)
    response = sandbox.api("/api/v1/users/self", tokens["access_token"])

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"result", "currentTime"}
    assert body["currentTime"] >= before
    me = body["result"]
    assert me["firstName"] == "Ada"
    assert me["lastName"] == "Lovelace"
    assert me["userName"] is None
    assert me["userEmail"] == "ada@example.com"
    assert me["href"] == sandbox.url("/api/v1/users/self")
    assert isinstance(me["linkedAccounts"], list)
    assert me["mailboxes"]
    assert all(m["href"].startswith(sandbox.url("/api/v1/mailboxes/")) for m in me["mailboxes"])
    assert isinstance(me["createTime"], int)
    assert me["updateTime"] >= me["createTime"]


def test_orders_paging_and_order(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    token = tokens["access_token"]
    first_page = sandbox.api("/api/v1/orders", token).json()["result"]
    second_page = sandbox.api("/api/v1/orders", token, offset=20).json()["result"]
    everything = sandbox.api("/api/v1/orders", token, limit=100).json()["result"]

    assert len(first_page) == 20
    assert len(everything) == ORDER_COUNT
    assert first_page + second_page == everything
    times = [order["updateTime"] for order in everything]
    assert times == sorted(times, reverse=True)
    window = sandbox.api("/api/v1/orders", token, limit=5, offset=3).json()["result"]
    assert window == everything[3:8]
    assert sandbox.api("/api/v1/orders", token, offset=500).json()["result"] == []

    order = everything[0]
    assert set(order) >= {
        "orderNumber",
        "orderTitle",
        "orderDate",
        "orderTotal",
        "orderTax",
        "shippingCost",
        "merchant",
        "purchaseType",
        "items",
        "shipments",
        "href",
        "updateTime",
    }
    for order in everything:
        assert order["href"].startswith(sandbox.url("/api/v1/orders/"))
        assert order["orderTotal"] >= order["orderTax"] + order["shippingCost"]
        assert all(isinstance(order[k], int) for k in ("orderTotal", "orderTax", "shippingCost"))
        assert len(order["orderDate"]) == 10
        assert set(order["merchant"]) == {"href", "name"}
        assert order["items"]
    ids = [int(order["href"].rsplit("/", 1)[1]) for order in everything]
    assert len(set(ids)) == ORDER_COUNT
    assert any(i < 0 for i in ids) and any(i > 0 for i in ids)
    assert all(-(2**63) <= i < 2**63 for i in ids)


def test_since_filters_strictly_newer(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    token = tokens["access_token"]
    everything = sandbox.api("/api/v1/orders", token, limit=100).json()["result"]
    pivot = everything[9]["updateTime"]

    newer = sandbox.api("/api/v1/orders", token, since=pivot, limit=100).json()["result"]

    assert newer == [o for o in everything if o["updateTime"] > pivot]
    assert len(newer) == 9
    assert sandbox.api("/api/v1/orders", token, since=pivot * 10).json()["result"] == []


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"offset": -1}, {"since": "yesterday"}],
)
def test_bad_collection_parameters(
    sandbox: Sandbox, tokens: dict[str, Any], params: dict[str, Any]
) -> None:
    response = sandbox.api("/api/v1/orders", tokens["access_token"], **params)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"


def test_order_detail_with_negative_id(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    token = tokens["access_token"]
    orders = sandbox.api("/api/v1/orders", token, limit=100).json()["result"]
    negative = next(o for o in orders if int(o["href"].rsplit("/", 1)[1]) < 0)

    response = sandbox.api(urlsplit(negative["href"]).path, token)

    assert response.status_code == 200
    assert response.json()["result"] == negative
    item = sandbox.api(urlsplit(negative["items"][0]["href"]).path, token).json()["result"]
    assert item["order"]["href"] == negative["href"]


def test_unknown_ids_are_404(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    token = tokens["access_token"]
    for path in ("/api/v1/orders/-5441729090682611070", "/api/v1/items/1", "/api/v1/shipments/2"):
        response = sandbox.api(path, token)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert sandbox.api("/api/v1/orders/99999999999999999999", token).status_code == 404


def test_items_shipments_and_mailboxes(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    token = tokens["access_token"]
    items = sandbox.api("/api/v1/items", token, limit=100).json()["result"]
    shipments = sandbox.api("/api/v1/shipments", token, limit=100).json()["result"]
    mailboxes = sandbox.api("/api/v1/mailboxes", token).json()["result"]

    assert items and shipments and mailboxes
    item = items[0]
    assert set(item) >= {
        "description",
        "price",
        "quantity",
        "purchaseDate",
        "category",
        "order",
        "productUrl",
        "imageUrl",
        "returned",
        "href",
        "updateTime",
    }
    assert set(item["category"]) == {"href", "name"}
    assert isinstance(item["price"], int) and isinstance(item["returned"], bool)
    shipment = shipments[0]
    assert set(shipment) >= {
        "status",
        "shipper",
        "trackingNumber",
        "trackingUrl",
        "shippingDate",
        "href",
        "updateTime",
    }
    for shipment in shipments:
        code = shipment["status"]["code"]
        assert shipment["status"]["description"] == SHIPMENT_STATUSES[code]
    for mailbox in mailboxes:
        assert set(mailbox) >= {"email", "mailboxType", "href", "updateTime"}
        assert mailbox["href"].startswith(sandbox.url("/api/v1/mailboxes/"))
    detail = sandbox.api(urlsplit(mailboxes[0]["href"]).path, token)
    assert detail.json()["result"] == mailboxes[0]


def test_data_is_deterministic_and_per_user(
    live_server: Any, sandbox: Sandbox, tokens: dict[str, Any]
) -> None:
    token = tokens["access_token"]
    again = sandbox.api("/api/v1/orders", token, limit=100).json()["result"]
    assert sandbox.api("/api/v1/orders", token, limit=100).json()["result"] == again

    grace = get_user_model().objects.create_user("grace", "grace@example.com", "pw")
    other_token = AccessToken.objects.create(
        user=grace,
        application=get_application_model().objects.get(client_id=CLIENT_ID),
        token="grace-access-token",
        expires=timezone.now() + timedelta(hours=1),
        scope="read",
    )
    theirs = sandbox.api("/api/v1/orders", other_token.token, limit=100).json()["result"]
    assert {o["href"] for o in theirs}.isdisjoint(o["href"] for o in again)
    assert sandbox.api(urlsplit(theirs[0]["href"]).path, token).status_code == 404


def test_api_is_read_only(sandbox: Sandbox, tokens: dict[str, Any]) -> None:
    response = requests.post(
        sandbox.url("/api/v1/orders"),
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 405


# --- setup, settings ---------------------------------------------------------------------


def test_ensure_application_is_idempotent(user: Any) -> None:
    first = ensure_application("cid", "secret-one", "http://localhost/cb")
    hashed = first.client_secret
    second = ensure_application("cid", "secret-one", ["http://localhost/cb"])

    assert second.pk == first.pk
    assert second.client_secret == hashed  # not re-hashed
    identify_hasher(hashed)  # DOT stores a hash, never the plaintext
    assert second.client_type == "confidential"
    assert second.authorization_grant_type == "authorization-code"
    assert second.skip_authorization is False
    assert second.algorithm == ""

    third = ensure_application("cid", "secret-two", ["http://a/cb", "http://b/cb"], user=user)
    assert third.pk == first.pk
    assert third.client_secret != hashed
    assert third.redirect_uris == "http://a/cb http://b/cb"
    assert third.user == user


def test_sandbox_setup_command() -> None:
    out = StringIO()
    args = ["--client-id", "cmd", "--client-secret", "s", "--redirect-uri", "http://x/cb"]
    call_command("sandbox_setup", *args, "--redirect-uri", "http://y/cb", stdout=out)
    call_command("sandbox_setup", *args, stdout=out)

    application = get_application_model().objects.get(client_id="cmd")
    assert application.redirect_uris == "http://x/cb"
    assert "client_id=cmd" in out.getvalue()


def test_oauth2_provider_settings() -> None:
    built = oauth2_provider_settings(ACCESS_TOKEN_SECONDS=60, extra={"SCOPES": {"x": "y"}})

    assert built["ACCESS_TOKEN_EXPIRE_SECONDS"] == 60
    assert built["REFRESH_TOKEN_EXPIRE_SECONDS"] == 14 * 24 * 3600
    assert built["AUTHORIZATION_CODE_EXPIRE_SECONDS"] == 60
    assert built["REFRESH_TOKEN_GRACE_PERIOD_SECONDS"] == 0
    assert built["ROTATE_REFRESH_TOKEN"] is True
    assert built["PKCE_REQUIRED"] is True
    assert built["OAUTH2_VALIDATOR_CLASS"] == VALIDATOR_CLASS
    assert "http" in built["ALLOWED_REDIRECT_URI_SCHEMES"]
    assert built["SCOPES"] == {"x": "y"}
    with pytest.raises(TypeError, match="ACCESS_TOKEN_SECS"):
        oauth2_provider_settings(ACCESS_TOKEN_SECS=1)


def test_sandbox_setting_precedence(settings: Any) -> None:
    settings.SLICE_SANDBOX = {}
    settings.OAUTH2_PROVIDER = {}
    assert sandbox_setting("CODE_SECONDS") == 60
    settings.OAUTH2_PROVIDER = {"AUTHORIZATION_CODE_EXPIRE_SECONDS": 30}
    assert sandbox_setting("CODE_SECONDS") == 30
    settings.SLICE_SANDBOX = {"CODE_SECONDS": 10}
    assert sandbox_setting("CODE_SECONDS") == 10


def test_system_checks(settings: Any) -> None:
    settings.SLICE_SANDBOX = {"ACCESS_TOKEN_SECS": 1, "GRACE_SECONDS": 5}
    settings.OAUTH2_PROVIDER = {"ROTATE_REFRESH_TOKEN": False}

    ids = {message.id for message in check_sandbox_settings()}

    assert ids == {"slice_sandbox.E001", "slice_sandbox.W001", "slice_sandbox.W002"}
    settings.SLICE_SANDBOX = {"GRACE_SECONDS": 5}
    settings.OAUTH2_PROVIDER = oauth2_provider_settings(GRACE_SECONDS=5)
    assert check_sandbox_settings() == []
