"""``slice_connect_reactivate``: the way back once the keys are fixed.

Rows written under a key that was then dropped from ``FERNET_KEYS`` (while other rows still
read) are marked ``undecryptable`` by renewal. Putting the key back and running the command
returns exactly those whose tokens read again to ``active``; run twice, it changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import responses
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from slice_connect import keys, services
from slice_connect.exceptions import CredentialUnreadable
from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL
from tests.helpers import tokens_readable

from .raw import flip_bit, raw_tokens
from .raw import write_raw_tokens as write_raw

pytestmark = pytest.mark.django_db

Status = SliceCredential.Status
Reason = SliceCredential.Reason
COMMAND = "slice_connect_reactivate"
K_NEW = "reactivation-key-new-long-enough-to-be-a-secret"
K_OLD = "reactivation-key-old-long-enough-to-be-a-secret"


def run(*args: str, keys: list[str]) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    with override_settings(FERNET_KEYS=keys):
        call_command(COMMAND, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def count(out: str, label: str) -> int:
    found = re.search(rf"^credentials {re.escape(label)}: (\d+)", out, re.MULTILINE)
    assert found, out
    return int(found.group(1))


def undecryptable() -> list[int]:
    rows = SliceCredential.objects.filter(
        status=Status.NEEDS_REAUTH, status_reason=Reason.UNDECRYPTABLE
    )
    return sorted(rows.values_list("pk", flat=True))


@pytest.fixture
def lost_key_drill(
    make_user: Callable[..., Any], make_credential: Callable[..., SliceCredential]
) -> dict[str, list[int]]:
    """Ten rows under K_OLD, twenty under K_NEW; K_OLD dropped too early; renewal marks ten.

    Plus one row that is really corrupt and one under K_OLD whose refresh token has expired
    by the time the key comes back.
    """
    due = {"access_token_expires_at": timezone.now() - timedelta(minutes=1)}
    with override_settings(FERNET_KEYS=[K_OLD]):
        old = [make_credential(make_user(), **due).pk for _ in range(10)]
        expired = make_credential(make_user(), **due).pk
    with override_settings(FERNET_KEYS=[K_NEW]):
        new = [make_credential(make_user(), **due).pk for _ in range(20)]
        corrupt = make_credential(make_user(), **due).pk
        write_raw(corrupt, *(flip_bit(raw) for raw in raw_tokens(corrupt)))
        with responses.RequestsMock(assert_all_requests_are_fired=False) as no_http:
            for pk in [*old, expired, corrupt]:
                with pytest.raises(CredentialUnreadable):
                    services.renew(SliceCredential.objects.get(pk=pk))
            assert len(no_http.calls) == 0
    SliceCredential.objects.filter(pk=expired).update(
        refresh_token_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert undecryptable() == sorted([*old, expired, corrupt])
    return {"old": old, "new": new, "corrupt": [corrupt], "expired": [expired]}


def test_fixed_keys_bring_the_marked_credentials_back(
    lost_key_drill: dict[str, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = {pk: raw_tokens(pk) for pk in SliceCredential.objects.values_list("pk", flat=True)}
    out, _err = run(keys=[K_NEW, K_OLD])
    print(out)
    assert count(out, "reactivated") == 10
    assert count(out, "still unreadable") == 1
    assert count(out, "readable but expired (left needs re-link)") == 1
    assert f"(ids {', '.join(map(str, lost_key_drill['old']))})" in out
    assert undecryptable() == lost_key_drill["corrupt"]
    active = SliceCredential.objects.filter(status=Status.ACTIVE)
    assert sorted(active.values_list("pk", flat=True)) == sorted(
        lost_key_drill["old"] + lost_key_drill["new"]
    )
    with override_settings(FERNET_KEYS=[K_NEW, K_OLD]):
        back = SliceCredential.objects.get(pk=lost_key_drill["old"][0])
    assert (back.status_reason, back.failure_count, back.last_error_code) == ("", 0, "")
    assert tokens_readable(back)
    (expired,) = lost_key_drill["expired"]
    row = SliceCredential.objects.without_tokens().get(pk=expired)
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.REFRESH_EXPIRED)
    # Only status fields changed: every token byte is as it was.
    assert {pk: raw_tokens(pk) for pk in before} == before
    text = out + caplog.text
    assert "gAAAAA" not in text
    for token in (back.access_token, back.refresh_token):
        assert isinstance(token, str) and token not in text


def test_running_it_again_changes_nothing(lost_key_drill: dict[str, list[int]]) -> None:
    run(keys=[K_NEW, K_OLD])
    snapshot = list(SliceCredential.objects.order_by("pk").values_list("pk", "status", "version"))
    out, _err = run(keys=[K_NEW, K_OLD])
    assert count(out, "reactivated") == 0
    assert count(out, "still unreadable") == 1
    assert count(out, "readable but expired (left needs re-link)") == 0
    after = list(SliceCredential.objects.order_by("pk").values_list("pk", "status", "version"))
    assert after == snapshot


def test_without_the_key_nothing_comes_back(lost_key_drill: dict[str, list[int]]) -> None:
    out, _err = run(keys=[K_NEW])
    assert count(out, "reactivated") == 0
    assert count(out, "still unreadable") == 12
    assert len(undecryptable()) == 12


def test_dry_run_writes_nothing(lost_key_drill: dict[str, list[int]]) -> None:
    out, _err = run("--dry-run", keys=[K_NEW, K_OLD])
    assert count(out, "to reactivate") == 10
    assert len(undecryptable()) == 12


def test_a_reactivated_credential_renews_again(
    lost_key_drill: dict[str, list[int]], settings: Any
) -> None:
    """Back to active, it goes through the one renewal path like any other credential."""
    run(keys=[K_NEW, K_OLD])
    settings.FERNET_KEYS = [K_NEW, K_OLD]
    pk = lost_key_drill["old"][3]
    with responses.RequestsMock() as slice_mock:
        slice_mock.post(
            TOKEN_URL,
            json={
                "access_token": "new-access-token-after-reactivation",
                "refresh_token": "new-refresh-token-after-reactivation",
                "token_type": "bearer",
                "expires_in": 3600,
            },
        )
        credential = services.renew(SliceCredential.objects.get(pk=pk))
    assert credential.version == 2
    assert SliceCredential.objects.get(pk=pk).access_token == "new-access-token-after-reactivation"


def test_rows_that_changed_meanwhile_are_skipped(
    lost_key_drill: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision is taken under each row's lock, on the row as it is then."""
    listed = keys.reactivation_candidates
    first = lost_key_drill["old"][0]

    def relinked_meanwhile() -> Any:
        ids = list(listed())
        SliceCredential.objects.filter(pk=first).update(status=Status.ACTIVE, status_reason="")
        return iter(ids)

    monkeypatch.setattr(keys, "reactivation_candidates", relinked_meanwhile)
    out, _err = run(keys=[K_NEW, K_OLD])
    assert count(out, "reactivated") == 9
    assert count(out, "changed during the run (skipped)") == 1


@pytest.mark.parametrize("keys", [K_OLD, [K_NEW, ""], [K_NEW, "short"]], ids=str)
def test_refuses_invalid_keys(lost_key_drill: dict[str, list[int]], keys: Any) -> None:
    with pytest.raises(CommandError, match="FERNET_KEYS is invalid, nothing was changed"):
        run(keys=keys)  # type: ignore[arg-type]
    assert len(undecryptable()) == 12
