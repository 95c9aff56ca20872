"""The credential admin: no token on any page, add disabled, actions through services."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from slice_connect import signals
from slice_connect.models import SliceCredential

from .raw import TABLE, raw_tokens

pytestmark = pytest.mark.django_db

TOKEN_URL = "https://slice.test/oauth/token"
REVOKE_URL = "https://slice.test/oauth/revoke"
CHANGELIST = "admin:slice_connect_slicecredential_changelist"


def canary(kind: str) -> str:
    return f"{kind}-CANARY-{secrets.token_hex(10)}"


def corrupt(pk: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET access_token = %s, refresh_token = %s WHERE id = %s",
            [b"gAAAAA-not-really", b"\x00\xffgarbage", pk],
        )


@pytest.fixture
def slice_api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(REVOKE_URL, status=200)
        mock.post(
            TOKEN_URL,
            json={
                "access_token": canary("RENEWEDACCESS"),
                "refresh_token": canary("RENEWEDREFRESH"),
                "token_type": "bearer",
                "expires_in": 3600,
            },
        )
        yield mock


@pytest.fixture
def admin_client(make_user: Callable[..., Any]) -> Client:
    admin = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def rows(
    make_user: Callable[..., Any], make_credential: Callable[..., SliceCredential]
) -> dict[str, SliceCredential]:
    now = timezone.now()
    alice = make_credential(
        make_user("alice", email="alice@wonder.example"),
        access_token=canary("ACCESS"),
        refresh_token=canary("REFRESH"),
        refresh_token_expires_at=now + timedelta(hours=12),
    )
    bob = make_credential(
        make_user("bob", email="bob@builder.example"),
        access_token=canary("ACCESS"),
        refresh_token=canary("REFRESH"),
        refresh_token_expires_at=now + timedelta(days=5),
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.INVALID_GRANT,
    )
    carol = make_credential(
        make_user("carol", email="carol@example.org"),
        access_token=canary("ACCESS"),
        refresh_token=canary("REFRESH"),
        refresh_token_expires_at=now - timedelta(days=1),
    )
    dave = make_credential(
        make_user("dave", email="dave@example.org"),
        access_token=canary("ACCESS"),
        refresh_token=canary("REFRESH"),
        refresh_token_expires_at=now + timedelta(days=13),
    )
    return {"alice": alice, "bob": bob, "carol": carol, "dave": dave}


def all_canaries(rows: dict[str, SliceCredential]) -> list[str]:
    found = []
    for credential in rows.values():
        found += [credential.access_token, credential.refresh_token]
    return found


def assert_no_tokens(html: str, canaries: list[str]) -> None:
    for value in canaries:
        assert value not in html
    assert "CANARY" not in html
    assert "gAAAAA" not in html  # no ciphertext either


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:slice_connect_slicecredential_{name}", args=args)


def listed(response: Any) -> set[str]:
    return {c.user.username for c in response.context["cl"].result_list}


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    handlers = {}
    for name in ("credential_unlinked", "credential_renewed", "credential_renewal_failed"):

        def handler(sender: Any, _name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            seen.append((_name, kwargs))

        handlers[name] = handler
        getattr(signals, name).connect(handler, weak=False)
    yield seen
    for name, handler in handlers.items():
        getattr(signals, name).disconnect(handler)


# -- pages --------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["changelist", "change", "history", "delete"])
@pytest.mark.parametrize("broken", [False, True], ids=["readable", "undecryptable"])
def test_pages_render_without_tokens(
    admin_client: Client, rows: dict[str, SliceCredential], page: str, broken: bool
) -> None:
    target = rows["alice"]
    if broken:
        corrupt(target.pk)
    before = raw_tokens(target.pk)
    address = url(page) if page == "changelist" else url(page, target.pk)
    response = admin_client.get(address)
    assert response.status_code == 200
    html = response.content.decode()
    assert_no_tokens(html, all_canaries(rows))
    assert "alice" in html
    assert raw_tokens(target.pk) == before


def test_pages_render_with_the_wrong_key_list(
    admin_client: Client, rows: dict[str, SliceCredential], settings: Any
) -> None:
    settings.FERNET_KEYS = ["a-key-nobody-used"]
    pk = rows["bob"].pk
    for address in (url("changelist"), url("change", pk), url("history", pk), url("delete", pk)):
        response = admin_client.get(address)
        assert response.status_code == 200, address
        assert_no_tokens(response.content.decode(), all_canaries(rows))


def test_search_results_contain_no_tokens(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    response = admin_client.get(url("changelist"), {"q": "alice"})
    assert_no_tokens(response.content.decode(), all_canaries(rows))


def test_change_form_has_no_token_inputs(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    response = admin_client.get(url("change", rows["alice"].pk))
    form = response.context["adminform"].form
    assert "access_token" not in form.fields and "refresh_token" not in form.fields
    html = response.content.decode()
    assert 'name="access_token"' not in html and 'name="refresh_token"' not in html


def test_saving_the_change_form_keeps_undecryptable_bytes(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    pk = rows["alice"].pk
    corrupt(pk)
    before = raw_tokens(pk)
    response = admin_client.post(url("change", pk), {"_save": "Save"})
    assert response.status_code == 302
    assert raw_tokens(pk) == before


def test_add_is_disabled(admin_client: Client, rows: dict[str, SliceCredential]) -> None:
    assert admin_client.get(url("add")).status_code == 403
    assert admin_client.post(url("add"), {"user": rows["alice"].user_id}).status_code == 403
    assert url("add") not in admin_client.get(url("changelist")).content.decode()


def test_anonymous_and_non_staff_are_kept_out(
    client: Client, make_user: Callable[..., Any], rows: dict[str, SliceCredential]
) -> None:
    assert client.get(url("changelist")).status_code == 302
    client.force_login(make_user("plain"))
    assert client.get(url("changelist")).status_code == 302


# -- search and filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("alice", {"alice"}),
        ("ALICE", {"alice"}),
        ("bob@builder.example", {"bob"}),
        ("example.org", {"carol", "dave"}),
        ("nobody", set()),
    ],
)
def test_search_by_username_and_email(
    admin_client: Client, rows: dict[str, SliceCredential], query: str, expected: set[str]
) -> None:
    response = admin_client.get(url("changelist"), {"q": query})
    assert response.status_code == 200
    assert listed(response) == expected


def test_search_does_not_touch_token_columns(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    token = rows["alice"].access_token
    response = admin_client.get(url("changelist"), {"q": token})
    assert response.status_code == 200
    assert listed(response) == set()


def test_search_fields_are_user_fields_only(admin_client: Client) -> None:
    from django.contrib import admin as django_admin

    model_admin = django_admin.site._registry[SliceCredential]
    assert model_admin.get_search_fields(None) == ("user__username", "user__email")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"alice", "bob", "carol", "dave"}),
        ({"status__exact": "active"}, {"alice", "carol", "dave"}),
        ({"status__exact": "needs_reauth"}, {"bob"}),
        ({"status_reason__exact": "invalid_grant"}, {"bob"}),
        ({"refresh_expires": "expired"}, {"carol"}),
        ({"refresh_expires": "1d"}, {"alice"}),
        ({"refresh_expires": "3d"}, {"alice"}),
        ({"refresh_expires": "7d"}, {"alice", "bob"}),
        ({"refresh_expires": "7d", "status__exact": "active"}, {"alice"}),
    ],
    ids=repr,
)
def test_list_filters(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    params: dict[str, str],
    expected: set[str],
) -> None:
    response = admin_client.get(url("changelist"), params)
    assert response.status_code == 200
    assert listed(response) == expected


def test_unknown_filter_value_is_ignored(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    response = admin_client.get(url("changelist"), {"refresh_expires": "100y"})
    assert response.status_code == 200
    assert listed(response) == {"alice", "bob", "carol", "dave"}


# -- actions --------------------------------------------------------------------------------------


def run_action(client: Client, action: str, *pks: int) -> Any:
    return client.post(
        url("changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in pks], "post": "yes"},
        follow=True,
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def revoked_tokens(mock: responses.RequestsMock) -> list[str]:
    return [
        parse_qs(c.request.body)["token"][0]
        for c in mock.calls
        if c.request.url.startswith(REVOKE_URL)
    ]


@pytest.mark.parametrize("action", ["unlink", "delete_selected"])
def test_unlink_action_goes_through_services(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
    action: str,
) -> None:
    chosen = [rows["alice"], rows["bob"]]
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, action, *(c.pk for c in chosen))
    assert response.status_code == 200
    assert set(SliceCredential.objects.values_list("user__username", flat=True)) == {
        "carol",
        "dave",
    }
    assert sorted(revoked_tokens(slice_api)) == sorted(c.refresh_token for c in chosen)
    unlinked = [kw for name, kw in events if name == "credential_unlinked"]
    assert sorted(kw["user"].username for kw in unlinked) == ["alice", "bob"]
    assert all(kw["request"] is not None for kw in unlinked)
    assert_no_tokens(response.content.decode(), all_canaries(rows))


def test_delete_view_goes_through_services(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    target = rows["dave"]
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url("delete", target.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not SliceCredential.objects.filter(pk=target.pk).exists()
    assert revoked_tokens(slice_api) == [target.refresh_token]
    assert [name for name, _ in events] == ["credential_unlinked"]
    assert events[0][1]["request"] is not None


def test_unlink_action_on_undecryptable_row_deletes_without_revoking(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    corrupt(rows["carol"].pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, "unlink", rows["carol"].pk)
    assert response.status_code == 200
    assert not SliceCredential.objects.filter(pk=rows["carol"].pk).exists()
    assert revoked_tokens(slice_api) == []
    assert [name for name, _ in events] == ["credential_unlinked"]


def test_renew_now_action(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    target = rows["dave"]  # not due: "Renew now" forces it
    before = raw_tokens(target.pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, "renew_now", target.pk)
    assert response.status_code == 200
    fresh = SliceCredential.objects.get(pk=target.pk)
    assert fresh.version == target.version + 1
    assert fresh.access_token != target.access_token
    assert fresh.refresh_token != target.refresh_token
    assert raw_tokens(target.pk) != before
    token_calls = [c for c in slice_api.calls if c.request.url == TOKEN_URL]
    assert len(token_calls) == 1
    sent = parse_qs(token_calls[0].request.body)
    assert sent["grant_type"] == ["refresh_token"]
    assert sent["refresh_token"] == [target.refresh_token]
    assert messages_of(response) == ["Renewed 1 credential."]
    assert [name for name, _ in events] == ["credential_renewed"]
    assert_no_tokens(response.content.decode(), all_canaries(rows))


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({"status": 400, "json": {"error": "invalid_grant"}}, "invalid_grant"),
        ({"status": 503}, "http_503"),
        ({"body": requests.ReadTimeout("slow")}, "response_lost"),
        ({"status": 401, "json": {"error": "invalid_client"}}, "invalid_client"),
    ],
    ids=["invalid_grant", "503", "timeout", "invalid_client"],
)
def test_renew_now_failures_become_messages(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
    spec: dict[str, Any],
    code: str,
) -> None:
    slice_api.replace(responses.POST, TOKEN_URL, **spec)
    target = rows["dave"]
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, "renew_now", target.pk)
    assert response.status_code == 200
    assert messages_of(response) == [f"Could not renew Slice link of dave: {code}"]
    fresh = SliceCredential.objects.get(pk=target.pk)
    assert fresh.version == target.version
    assert fresh.refresh_token == target.refresh_token
    assert_no_tokens(response.content.decode(), all_canaries(rows))


def test_renew_now_mixed_results(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    corrupt(rows["carol"].pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(
            admin_client, "renew_now", rows["alice"].pk, rows["bob"].pk, rows["carol"].pk
        )
    assert response.status_code == 200
    found = messages_of(response)
    assert "Could not renew Slice link of bob: needs_reauth" in found
    assert "Could not renew Slice link of carol: undecryptable" in found
    assert "Renewed 1 credential." in found
    assert len(found) == 3
    assert SliceCredential.objects.get(pk=rows["alice"].pk).version == rows["alice"].version + 1
    carol = SliceCredential.objects.get(pk=rows["carol"].pk)
    assert carol.status == SliceCredential.Status.NEEDS_REAUTH
    assert carol.status_reason == SliceCredential.Reason.UNDECRYPTABLE


def test_actions_need_the_matching_permission(
    make_user: Callable[..., Any],
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_slicecredential"))
    client = Client()
    client.force_login(viewer)
    assert client.get(url("changelist")).status_code == 200
    for action in ("unlink", "renew_now"):
        with django_capture_on_commit_callbacks(execute=True):
            run_action(client, action, rows["alice"].pk)
    assert SliceCredential.objects.filter(pk=rows["alice"].pk).exists()
    assert SliceCredential.objects.get(pk=rows["alice"].pk).version == rows["alice"].version
    assert list(slice_api.calls) == []
