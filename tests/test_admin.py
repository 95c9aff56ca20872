"""The credential admin: no token on any page, add disabled, actions through services."""

from __future__ import annotations

import secrets
import threading
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
from tests.conftest import REVOKE_URL, TOKEN_URL

from .raw import TABLE, raw_tokens

pytestmark = pytest.mark.django_db

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
def slice_api(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    mock = slice_mock
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
    return mock


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


def test_posting_the_change_form_keeps_undecryptable_bytes(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    pk = rows["alice"].pk
    corrupt(pk)
    before = raw_tokens(pk)
    response = admin_client.post(url("change", pk), {"_save": "Save"})
    assert response.status_code == 403
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
    # Sorted: a set's repr changes with the hash seed, and pytest-xdist's workers must
    # collect the same ids.
    ids=lambda value: repr(sorted(value) if isinstance(value, set) else value),
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
        ({"body": requests.ReadTimeout("slow")}, "timeout"),
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


# -- the change page is view-only -----------------------------------------------------------------


def row_state(pk: int) -> dict[str, Any]:
    """Every column of the credential's row as stored (token columns as raw bytes)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {TABLE} WHERE id = %s", [pk])
        names = [column[0] for column in cursor.description]
        row = cursor.fetchone()
    assert row is not None
    return {
        name: bytes(value) if isinstance(value, (bytes, memoryview)) else value
        for name, value in zip(names, row, strict=True)
    }


def staff_with(make_user: Callable[..., Any], name: str, *codenames: str) -> Client:
    user = make_user(name, is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("who", ["superuser", "change", "view"])
def test_change_page_is_view_only_for_everyone(
    admin_client: Client,
    make_user: Callable[..., Any],
    rows: dict[str, SliceCredential],
    who: str,
) -> None:
    client = {
        "superuser": lambda: admin_client,
        "change": lambda: staff_with(make_user, "changer", "change_slicecredential"),
        "view": lambda: staff_with(make_user, "viewer", "view_slicecredential"),
    }[who]()
    pk = rows["alice"].pk
    page = client.get(url("change", pk))
    assert page.status_code == 200
    html = page.content.decode()
    assert "alice" in html
    assert page.context["has_change_permission"] is False
    for button in ('name="_save"', 'name="_continue"', 'name="_addanother"'):
        assert button not in html
    assert client.get(url("changelist")).status_code == 200
    before = row_state(pk)
    response = client.post(url("change", pk), {"_save": "Save", "status": "needs_reauth"})
    assert response.status_code == 403
    assert row_state(pk) == before


def test_change_permission_still_runs_renew_now(
    make_user: Callable[..., Any],
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    client = staff_with(make_user, "changer", "view_slicecredential", "change_slicecredential")
    target = rows["dave"]
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(client, "renew_now", target.pk)
    assert messages_of(response) == ["Renewed 1 credential."]
    assert SliceCredential.objects.get(pk=target.pk).version == target.version + 1


def test_a_renewal_committed_between_get_and_post_is_not_overwritten(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    target = rows["dave"]
    page = admin_client.get(url("change", target.pk))
    assert page.status_code == 200
    form = page.context["adminform"].form
    posted = {name: form[name].value() or "" for name in form.fields}
    with django_capture_on_commit_callbacks(execute=True):
        from slice_connect import services

        services.renew(SliceCredential.objects.get(pk=target.pk), force=True)
    renewed = row_state(target.pk)
    assert renewed["version"] == target.version + 1
    response = admin_client.post(url("change", target.pk), {**posted, "_save": "Save"})
    assert response.status_code == 403
    assert row_state(target.pk) == renewed  # version, both tokens, expiries, journal


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", ["renewed", "answer_lost"])
def test_a_renewal_racing_a_direct_post_is_not_rolled_back(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    outcome: str,
) -> None:
    """The admin reads the row, a worker's renewal commits, then the admin would save.

    The renewal runs in another thread on its own connection, as a Celery worker would, and
    commits while the admin's POST is between reading the row and saving it. Before the
    change page became view-only, that save wrote the unlocked snapshot back: the version,
    expiries and renewal time went back (``renewed``), or the renewal journal was erased
    (``answer_lost``: the stamp that says the refresh token may already be spent).
    """
    from django.contrib import admin as django_admin
    from django.db import connections

    from slice_connect import services
    from slice_connect.exceptions import SliceConnectError

    if outcome == "answer_lost":
        slice_api.replace(responses.POST, TOKEN_URL, body=requests.ReadTimeout("lost"))
    target = rows["dave"]
    model_admin = django_admin.site._registry[SliceCredential]
    original = model_admin.get_object
    after_renewal: dict[str, Any] = {}

    def worker() -> None:
        try:
            services.renew(SliceCredential.objects.get(pk=target.pk), force=True)
        except SliceConnectError:
            pass
        finally:
            connections.close_all()

    def get_object_then_race(*args: Any, **kwargs: Any) -> Any:
        snapshot = original(*args, **kwargs)
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        after_renewal.update(row_state(target.pk))
        return snapshot

    monkeypatch.setattr(model_admin, "get_object", get_object_then_race)
    response = admin_client.post(
        url("change", target.pk), {"_save": "Save", "version": "0", "status": "active"}
    )
    assert response.status_code == 403
    if outcome == "renewed":
        assert after_renewal["version"] == target.version + 1
        assert after_renewal["renewal_started_at"] is None
    else:
        assert after_renewal["renewal_started_at"] is not None
        assert after_renewal["failure_count"] == 1
    assert row_state(target.pk) == after_renewal


# -- admin actions leave history ----------------------------------------------------------------


def test_admin_actions_leave_log_entries_without_tokens(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.contrib.admin.models import CHANGE, DELETION, LogEntry
    from django.contrib.contenttypes.models import ContentType

    alice, bob, carol, dave = (rows[name] for name in ("alice", "bob", "carol", "dave"))
    corrupt(carol.pk)
    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, "renew_now", dave.pk)  # renewed
        run_action(admin_client, "renew_now", bob.pk)  # needs_reauth: refused
        run_action(admin_client, "unlink", alice.pk)
        assert admin_client.post(url("delete", carol.pk), {"post": "yes"}).status_code == 302
        run_action(admin_client, "delete_selected", dave.pk)
    assert set(SliceCredential.objects.values_list("pk", flat=True)) == {bob.pk}

    entries = list(LogEntry.objects.order_by("pk"))
    kind = ContentType.objects.get_for_model(SliceCredential)
    assert {(e.user.username, e.content_type_id) for e in entries} == {("root", kind.pk)}
    got = [(e.object_id, e.action_flag, e.change_message) for e in entries]
    revoked = "revocation of its refresh token at Slice requested (best effort)"
    assert got == [
        (
            str(dave.pk),
            CHANGE,
            f"Renew now: renewed (version {dave.version} to {dave.version + 1}).",
        ),
        (str(bob.pk), CHANGE, "Renew now failed: needs_reauth (status needs_reauth)."),
        (str(alice.pk), DELETION, f"Unlinked alice and deleted the credential; {revoked}."),
        (
            str(carol.pk),
            DELETION,
            "Unlinked carol and deleted the credential; "
            "not revoked at Slice (its tokens cannot be decrypted).",
        ),
        (str(dave.pk), DELETION, f"Unlinked dave and deleted the credential; {revoked}."),
    ]
    assert [e.object_repr for e in entries] == [
        "Slice link of dave",
        "Slice link of bob",
        "Slice link of alice",
        "Slice link of carol",
        "Slice link of dave",
    ]
    # No token (the rows' own, or the renewed ones Slice sent) and no ciphertext anywhere.
    stored = repr(list(LogEntry.objects.values()))
    assert_no_tokens(stored, all_canaries(rows))
    history = admin_client.get(url("history", bob.pk))
    assert "Renew now failed: needs_reauth" in history.content.decode()
    assert_no_tokens(history.content.decode(), all_canaries(rows))


def test_save_model_refuses_whoever_calls_it(
    admin_client: Client, rows: dict[str, SliceCredential]
) -> None:
    from django.contrib import admin as django_admin
    from django.core.exceptions import PermissionDenied
    from django.test import RequestFactory

    model_admin = django_admin.site._registry[SliceCredential]
    request = RequestFactory().post("/")
    request.user = rows["alice"].user
    before = row_state(rows["alice"].pk)
    with pytest.raises(PermissionDenied):
        model_admin.save_model(request, rows["alice"], None, True)
    assert row_state(rows["alice"].pk) == before


def test_unlink_history_says_when_revocation_is_off(
    admin_client: Client,
    rows: dict[str, SliceCredential],
    slice_api: responses.RequestsMock,
    slice_settings: Callable[..., None],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.contrib.admin.models import LogEntry

    slice_settings(REVOKE_ON_UNLINK=False)
    with django_capture_on_commit_callbacks(execute=True):
        run_action(admin_client, "unlink", rows["alice"].pk)
    assert revoked_tokens(slice_api) == []
    assert [e.change_message for e in LogEntry.objects.all()] == [
        "Unlinked alice and deleted the credential; not revoked at Slice (revocation is "
        "turned off)."
    ]
