"""``manage.py slice_connect_renew``: which credentials it renews, and what it prints."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
from django.core.management import CommandError, call_command
from django.utils import timezone

from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL

pytestmark = pytest.mark.django_db

SUMMARY = re.compile(r"^renewed: (\d+), failed: (\d+), skipped: (\d+)$", re.MULTILINE)

MakeCredential = Callable[..., SliceCredential]


@dataclass
class Output:
    stdout: str
    stderr: str

    def summary(self) -> tuple[int, int, int]:
        matches = SUMMARY.findall(self.stdout)
        assert len(matches) == 1, self.stdout
        renewed, failed, skipped = (int(n) for n in matches[0])
        return renewed, failed, skipped


def run(*args: str) -> Output:
    out, err = StringIO(), StringIO()
    call_command("slice_connect_renew", *args, stdout=out, stderr=err)
    return Output(out.getvalue(), err.getvalue())


class TokenEndpoint:
    """Answers each refresh by the token sent: rotates good ones, fails the others."""

    def __init__(self) -> None:
        self.failing: dict[str, tuple[int, str]] = {}
        self.on_refresh: dict[str, Callable[[], None]] = {}
        self.seen: list[str] = []
        self.counter = 0
        self.limit = 1000  # a runaway loop fails the test instead of hanging it

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        token = parse_qs(body)["refresh_token"][0]
        self.seen.append(token)
        if len(self.seen) > self.limit:
            raise RuntimeError("too many refresh requests")
        if token in self.on_refresh:
            self.on_refresh[token]()
        if token in self.failing:
            status, error = self.failing[token]
            return status, {"Content-Type": "application/json"}, f'{{"error": "{error}"}}'
        self.counter += 1
        payload = (
            f'{{"access_token": "a{self.counter}", "refresh_token": "r{self.counter}", '
            '"token_type": "Bearer", "expires_in": 3600}'
        )
        return 200, {"Content-Type": "application/json"}, payload


@pytest.fixture
def endpoint(slice_mock: responses.RequestsMock) -> TokenEndpoint:
    handler = TokenEndpoint()
    slice_mock.add_callback(responses.POST, TOKEN_URL, callback=handler)
    return handler


def due(make_user: Callable[..., Any], make_credential: MakeCredential, days: float) -> Any:
    """A credential whose refresh token expires in ``days`` (due when under 7)."""
    return make_credential(
        make_user(), refresh_token_expires_at=timezone.now() + timedelta(days=days)
    )


def test_default_renews_due_credentials_only(
    make_user: Callable[..., Any], make_credential: MakeCredential, endpoint: TokenEndpoint
) -> None:
    due_one = due(make_user, make_credential, 3)
    due_two = due(make_user, make_credential, 6)
    not_due = due(make_user, make_credential, 13)
    output = run()
    assert output.summary() == (2, 0, 0)
    assert endpoint.seen == [due_one.refresh_token, due_two.refresh_token]  # most urgent first
    assert SliceCredential.objects.get(pk=not_due.pk).version == not_due.version
    assert run("--due").summary() == (0, 0, 0)  # renewed ones are no longer due


def test_summary_with_a_mix_of_due_not_due_and_failing(
    make_user: Callable[..., Any], make_credential: MakeCredential, endpoint: TokenEndpoint
) -> None:
    ok = due(make_user, make_credential, 1)
    refused = due(make_user, make_credential, 2)
    down = due(make_user, make_credential, 3)
    renewed_meanwhile = due(make_user, make_credential, 4)
    due(make_user, make_credential, 10)  # not due: not even counted
    endpoint.failing[str(refused.refresh_token)] = (400, "invalid_grant")
    endpoint.failing[str(down.refresh_token)] = (503, "temporarily_unavailable")

    def sibling_renews() -> None:
        # Between the listing and its turn, another worker renews this one.
        SliceCredential.objects.filter(pk=renewed_meanwhile.pk).update(
            refresh_token_expires_at=timezone.now() + timedelta(days=14), version=99
        )

    endpoint.on_refresh[str(ok.refresh_token)] = sibling_renews

    output = run()

    assert output.summary() == (1, 2, 1)
    # The 503 may have been processed, so it was retried once at once with the same token.
    assert len(endpoint.seen) == 4 and endpoint.seen[-2:] == [str(down.refresh_token)] * 2
    assert f"credential {refused.pk}: needs re-link (invalid_grant)" in output.stderr
    assert f"credential {down.pk}: http_503" in output.stderr
    statuses = dict(SliceCredential.objects.values_list("pk", "status"))
    assert statuses[refused.pk] == SliceCredential.Status.NEEDS_REAUTH
    assert statuses[down.pk] == SliceCredential.Status.ACTIVE
    for text in (output.stdout, output.stderr):
        for credential in (ok, refused, down, renewed_meanwhile):
            assert str(credential.refresh_token) not in text
            assert str(credential.access_token) not in text


def test_all_forces_every_active_credential(
    make_user: Callable[..., Any], make_credential: MakeCredential, endpoint: TokenEndpoint
) -> None:
    fresh = due(make_user, make_credential, 13)
    soon = due(make_user, make_credential, 2)
    make_credential(make_user(), status=SliceCredential.Status.NEEDS_REAUTH)
    output = run("--all")
    assert output.summary() == (2, 0, 0)
    assert endpoint.seen == [soon.refresh_token, fresh.refresh_token]


@pytest.mark.parametrize("by", ["username", "id"])
def test_user_by_username_or_id_forces_that_credential(
    by: str,
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    endpoint: TokenEndpoint,
) -> None:
    target = make_user("bob")
    credential = make_credential(target)  # not due
    due(make_user, make_credential, 1)  # due, but not asked for
    value = target.username if by == "username" else str(target.pk)
    output = run("--user", value)
    assert output.summary() == (1, 0, 0)
    assert endpoint.seen == [credential.refresh_token]
    assert SliceCredential.objects.get(pk=credential.pk).version == credential.version + 1


def test_user_needing_reauth_is_reported_failed_without_a_request(
    make_user: Callable[..., Any], make_credential: MakeCredential, endpoint: TokenEndpoint
) -> None:
    target = make_user("carol")
    make_credential(
        target,
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.LOST_ROTATION,
    )
    output = run("--user", "carol")
    assert output.summary() == (0, 1, 0)
    assert "needs re-link (lost_rotation)" in output.stderr
    assert endpoint.seen == []


def test_unknown_user_is_a_command_error(
    make_user: Callable[..., Any], endpoint: TokenEndpoint
) -> None:
    make_user("dave")
    for value in ("nobody", "987654"):
        with pytest.raises(CommandError, match="No user"):
            run("--user", value)
    assert endpoint.seen == []


def test_user_without_credential_is_an_error(
    make_user: Callable[..., Any], endpoint: TokenEndpoint
) -> None:
    make_user("erin")
    with pytest.raises(CommandError, match="has not linked a Slice account"):
        run("--user", "erin")
    assert endpoint.seen == []


def test_selectors_are_mutually_exclusive(endpoint: TokenEndpoint) -> None:
    with pytest.raises(CommandError):
        run("--all", "--user", "x")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param((), "due", id="due"),
        pytest.param(("--all",), "active", id="all"),
        pytest.param(("--user", "erin"), "erin", id="user"),
    ],
)
def test_dry_run_lists_ids_and_sends_nothing(
    args: tuple[str, ...],
    expected: str,
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    erin = make_credential(make_user("erin"))  # fresh
    soon = due(make_user, make_credential, 1)
    later = due(make_user, make_credential, 5)
    make_credential(make_user(), status=SliceCredential.Status.NEEDS_REAUTH)
    versions = dict(SliceCredential.objects.values_list("pk", "version"))
    ids = {"due": [soon.pk, later.pk], "active": [soon.pk, later.pk, erin.pk], "erin": [erin.pk]}[
        expected
    ]

    output = run("--dry-run", *args)

    listed = [int(pk) for pk in re.findall(r"^would renew credential (\d+)$", output.stdout, re.M)]
    assert listed == ids
    assert f"{len(ids)} credential(s) would be renewed (dry run)." in output.stdout
    assert not SUMMARY.search(output.stdout)
    assert len(slice_mock.calls) == 0
    assert dict(SliceCredential.objects.values_list("pk", "version")) == versions


@pytest.mark.parametrize(
    ("count", "every", "expected"),
    [(5, 2, [2, 4]), (4, 2, [2]), (3, 1, [1, 2]), (2, 5, [])],
)
def test_progress_lines(
    count: int,
    every: int,
    expected: list[int],
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    endpoint: TokenEndpoint,
) -> None:
    for days in range(1, count + 1):
        due(make_user, make_credential, days)
    output = run("--progress-every", str(every))
    progress = re.findall(r"^\.\.\. (\d+)/(\d+) \(\d+\.\d/s\)$", output.stdout, re.MULTILINE)
    assert progress == [(str(done), str(count)) for done in expected]
    lines = output.stdout.rstrip().splitlines()
    assert len(lines) == len(expected) + 1  # no progress line for the last one: the summary
    assert lines[-1] == f"renewed: {count}, failed: 0, skipped: 0"


def test_no_progress_lines_by_default_for_a_small_run(
    make_user: Callable[..., Any], make_credential: MakeCredential, endpoint: TokenEndpoint
) -> None:
    for days in range(1, 4):
        due(make_user, make_credential, days)
    output = run()
    assert output.stdout == "renewed: 3, failed: 0, skipped: 0\n"


@pytest.mark.parametrize("selector", [("--all",), ("--due",)])
def test_each_credential_is_renewed_once_across_batches(
    selector: tuple[str, ...],
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    endpoint: TokenEndpoint,
    settings: Any,
) -> None:
    # A renewal moves the refresh deadline past the keyset cursor; the walk must not meet
    # the renewed credential again (with --all it used to loop for ever).
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "RENEW_BATCH_SIZE": 2}
    # A renewed deadline 6 days out lies past the cursor and, under --due, is still due
    # (Slice issuing refresh tokens shorter-lived than RENEW_WITHIN would do that).
    settings.SLICE_CONNECT["REFRESH_TOKEN_LIFETIME"] = timedelta(days=6)
    credentials = [due(make_user, make_credential, days) for days in (1, 2, 3, 4, 5)]
    endpoint.limit = 10
    assert run(*selector).summary() == (5, 0, 0)
    assert sorted(endpoint.seen) == sorted(c.refresh_token for c in credentials)
    for credential in credentials:
        assert SliceCredential.objects.get(pk=credential.pk).version == credential.version + 1
