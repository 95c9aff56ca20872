"""``slice_connect_rotate_keys`` (R18, R19, R21; battery B9): the key rotation drill.

Rule and battery numbers are those of docs/threat-model.rst.

Rows are written under K1, then FERNET_KEYS becomes [K2, K1], the command runs, and every
row must read with [K2] alone; then again with [K3, K2]. The big drill (10,000 rows) runs on
PostgreSQL; a 300-row version runs everywhere.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from fernet_fields import hkdf

from slice_connect import keys as rotate_keys
from slice_connect.fields import EncryptedTokenField
from slice_connect.models import TOKEN_FIELDS, SliceCredential

from .raw import TABLE, flip_bit
from .raw import write_raw_tokens as write_raw

pytestmark = pytest.mark.django_db

K1, K2, K3 = (f"rotation-key-{n}-long-enough-to-be-a-secret" for n in ("one", "two", "three"))
WRONG = "not-a-key-we-ever-used-for-anything-at-all"
COMMAND = "slice_connect_rotate_keys"
Raw = tuple[bytes, bytes]


# -- helpers -----------------------------------------------------------------------------


def fernet(key: str) -> Fernet:
    return Fernet(hkdf.derive_fernet_key(key))


def raw_rows() -> dict[int, Raw]:
    """Every row's stored token bytes, read past the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, access_token, refresh_token FROM {TABLE} ORDER BY id")
        return {pk: (bytes(a), bytes(r)) for pk, a, r in cursor.fetchall()}


def seed(count: int, *, key: str = K1) -> dict[int, tuple[str, str]]:
    """Bulk-create ``count`` credentials under ``key``; return {pk: (access, refresh)}."""
    now = timezone.now()
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"rot-{i}-{secrets.token_hex(3)}", password="!")
        for i in range(count)
    )
    tokens = [
        (f"CANARY-A-{i}-{secrets.token_hex(6)}", f"CANARY-R-{i}-{secrets.token_hex(6)}")
        for i in range(count)
    ]
    with override_settings(FERNET_KEYS=[key]):
        rows = SliceCredential.objects.bulk_create(
            SliceCredential(
                user_id=user.pk,
                access_token=access,
                refresh_token=refresh,
                access_token_expires_at=now + timedelta(hours=1),
                refresh_token_expires_at=now + timedelta(days=14),
            )
            for user, (access, refresh) in zip(users, tokens, strict=True)
        )
    return {row.pk: pair for row, pair in zip(rows, tokens, strict=True)}


def read_with(keys: list[str]) -> dict[int, tuple[Any, Any]]:
    """Every row's tokens, decrypted by the ORM under ``keys`` alone."""
    with override_settings(FERNET_KEYS=keys):
        rows = SliceCredential.objects.order_by("pk").values_list("pk", *TOKEN_FIELDS)
        return {pk: (access, refresh) for pk, access, refresh in rows}


def timestamps(rows: dict[int, Raw], key: str) -> dict[int, tuple[int, int]]:
    f = fernet(key)
    return {pk: (f.extract_timestamp(a), f.extract_timestamp(r)) for pk, (a, r) in rows.items()}


@dataclass
class Run:
    out: str
    err: str

    def count(self, label: str) -> int:
        found = re.search(rf"^rows {re.escape(label)}: (\d+)", self.out, re.MULTILINE)
        assert found, f"no {label!r} line in:\n{self.out}"
        return int(found.group(1))

    @property
    def still_old(self) -> int:
        found = re.search(r"^(\d+) rows? still under older keys$", self.out, re.MULTILINE)
        assert found, self.out
        return int(found.group(1))

    @property
    def unreadable_ids(self) -> list[int]:
        pattern = r"^rows unreadable with every key: \d+ \(ids ([\d, ]+?)(?: and \d+ more.*)?\)$"
        found = re.search(pattern, self.out, re.MULTILINE)
        return [int(pk) for pk in found.group(1).split(", ")] if found else []


def rotate(*args: str, keys: list[str] | None = None) -> Run:
    out, err = StringIO(), StringIO()
    with override_settings(**({"FERNET_KEYS": keys} if keys else {})):
        call_command(COMMAND, *args, stdout=out, stderr=err)
    return Run(out.getvalue(), err.getvalue())


# -- the three-generation drill ------------------------------------------------------------


@pytest.mark.parametrize(
    "count", [300, pytest.param(10_000, marks=pytest.mark.postgres, id="10000")]
)
def test_three_generation_drill(count: int) -> None:
    tokens = seed(count)
    born = timestamps(raw_rows(), K1)
    assert read_with([K2, K1]) == tokens

    first = rotate(keys=[K2, K1])
    assert (first.count("rotated"), first.count("already current")) == (count, 0)
    assert first.count("unreadable with every key") == 0
    assert first.still_old == 0
    assert read_with([K2]) == tokens
    rotated = raw_rows()
    assert timestamps(rotated, K2) == born  # MultiFernet.rotate keeps the original time
    with pytest.raises(InvalidToken):
        fernet(K1).decrypt(rotated[min(rotated)][0])

    again = rotate(keys=[K2, K1])
    assert (again.count("rotated"), again.count("already current")) == (0, count)
    assert again.still_old == 0
    assert raw_rows() == rotated  # a second run touches no row

    third = rotate(keys=[K3, K2])
    assert third.count("rotated") == count
    assert third.still_old == 0
    assert read_with([K3]) == tokens
    assert timestamps(raw_rows(), K3) == born
    assert rotate(keys=[K3, K2]).count("rotated") == 0


def test_dry_run_counts_and_writes_nothing() -> None:
    tokens = seed(30)
    before = raw_rows()
    run = rotate("--dry-run", keys=[K2, K1])
    assert run.out.startswith("Dry run: ")
    assert run.count("to rotate") == 30
    assert run.still_old == 30
    assert raw_rows() == before
    assert read_with([K1]) == tokens


def test_only_columns_under_an_old_key_are_rewritten() -> None:
    (pk,) = seed(1)
    _access, refresh = raw_rows()[pk]
    current_access = fernet(K2).encrypt(b"already-under-k2")
    write_raw(pk, current_access, refresh)
    run = rotate(keys=[K2, K1])
    assert run.count("rotated") == 1
    new_access, new_refresh = raw_rows()[pk]
    assert new_access == current_access
    assert new_refresh != refresh and fernet(K2).decrypt(new_refresh)


def test_works_on_raw_bytes_without_decrypting_or_saving(monkeypatch: Any) -> None:
    tokens = seed(20)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the command must not go through the model field or save()")

    monkeypatch.setattr(EncryptedTokenField, "from_db_value", refuse)
    monkeypatch.setattr(EncryptedTokenField, "get_db_prep_save", refuse)
    monkeypatch.setattr(SliceCredential, "save", refuse)
    run = rotate(keys=[K2, K1])
    assert run.count("rotated") == 20
    monkeypatch.undo()
    assert read_with([K2]) == tokens


# -- undecryptable rows -------------------------------------------------------------------


@pytest.mark.parametrize(
    "count", [300, pytest.param(10_000, marks=pytest.mark.postgres, id="10000")]
)
def test_one_percent_corrupted_rows_are_reported_and_left_alone(count: int) -> None:
    tokens = seed(count)
    rows = raw_rows()
    bad = sorted(rows)[::100][: count // 100]
    for n, pk in enumerate(bad):
        access, refresh = rows[pk]
        if n % 3 == 0:
            write_raw(pk, access[: len(access) // 2], refresh)  # truncated
        elif n % 3 == 1:
            write_raw(pk, access, flip_bit(refresh))  # one bit flipped
        else:
            write_raw(pk, access[:-7], flip_bit(refresh))  # both
    corrupted = {pk: raw_rows()[pk] for pk in bad}

    run = rotate(keys=[K2, K1])
    assert run.count("rotated") == count - len(bad)
    assert run.count("unreadable with every key") == len(bad)
    assert run.unreadable_ids == bad
    assert run.still_old == 0
    assert "--mark-unreadable" in run.err
    after = raw_rows()
    assert {pk: after[pk] for pk in bad} == corrupted  # byte-identical
    good = {pk: pair for pk, pair in tokens.items() if pk not in corrupted}
    read = read_with([K2])
    assert {pk: read[pk] for pk in good} == good
    assert SliceCredential.objects.filter(status=SliceCredential.Status.ACTIVE).count() == count

    marked = rotate("--mark-unreadable", keys=[K2, K1])
    assert marked.count("rotated") == 0
    assert marked.count("marked needs re-link") == len(bad)
    flagged = SliceCredential.objects.filter(
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.UNDECRYPTABLE,
    )
    assert sorted(flagged.values_list("pk", flat=True)) == bad
    assert raw_rows() == after
    # Already flagged rows are still reported, but not marked again.
    again = rotate("--mark-unreadable", keys=[K2, K1])
    assert again.unreadable_ids == bad
    assert again.count("marked needs re-link") == 0
    assert rotate("--dry-run", "--mark-unreadable", keys=[K2]).count("to mark needs re-link") == 0


def test_wrong_key_list_drill_rewrites_nothing_and_refuses_to_mark_anyone() -> None:
    """A process whose keys read no row is misconfigured: nobody is marked for that."""
    seed(40)
    before = raw_rows()
    run = rotate(keys=[WRONG])
    assert run.count("unreadable with every key") == 40
    assert run.count("rotated") == 0
    assert raw_rows() == before
    for args in (("--dry-run", "--mark-unreadable"), ("--mark-unreadable",)):
        with pytest.raises(CommandError, match="no key in FERNET_KEYS decrypts any stored"):
            rotate(*args, keys=[WRONG])
    assert raw_rows() == before
    assert SliceCredential.objects.active().count() == 40
    # With the right key back in the list, the same run marks only what is really broken.
    rows = raw_rows()
    bad = sorted(rows)[7]
    write_raw(bad, flip_bit(rows[bad][0]), rows[bad][1])
    marked = rotate("--mark-unreadable", keys=[WRONG, K1])
    assert marked.count("marked needs re-link") == 1
    assert marked.unreadable_ids == [bad]
    assert SliceCredential.objects.active().count() == 39


# -- crashes and races --------------------------------------------------------------------


def crash_between_batches(monkeypatch: Any) -> None:
    """The second batch raises before it locks anything (the process died between them)."""
    original, calls = rotate_keys._write_batch, [0]

    def crashing(plans: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated crash")
        return original(plans, **kwargs)

    monkeypatch.setattr(rotate_keys, "_write_batch", crashing)


def crash_inside_a_batch(monkeypatch: Any) -> None:
    """The second batch writes half its rows, then raises inside its transaction."""
    original, calls = rotate_keys._store, [0]

    def crashing(plans: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            original(plans[: len(plans) // 2])
            raise RuntimeError("simulated crash")
        original(plans)

    monkeypatch.setattr(rotate_keys, "_store", crashing)


@pytest.mark.parametrize(
    "crash",
    [
        pytest.param(crash_between_batches, id="between-batches"),
        pytest.param(crash_inside_a_batch, id="inside-a-batch"),
    ],
)
def test_resumes_after_a_crash(monkeypatch: Any, crash: Callable[[Any], None]) -> None:
    tokens = seed(300)
    before = raw_rows()
    born = timestamps(before, K1)
    crash(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rotate("--batch-size", "100", keys=[K2, K1])
    monkeypatch.undo()

    crashed = raw_rows()
    first_batch = sorted(crashed)[:100]
    for pk, pair in crashed.items():
        if pk in first_batch:  # committed before the crash
            assert pair != before[pk] and fernet(K2).decrypt(pair[0])
        else:  # the crashed batch rolled back, the rest never started
            assert pair == before[pk]

    run = rotate("--batch-size", "100", keys=[K2, K1])
    assert (run.count("rotated"), run.count("already current")) == (200, 100)
    assert run.still_old == 0
    final = raw_rows()
    assert {pk: final[pk] for pk in first_batch} == {pk: crashed[pk] for pk in first_batch}
    assert read_with([K2]) == tokens
    assert timestamps(final, K2) == born


def renew_in_place(pk: int, access: str, refresh: str) -> None:
    """What services.renew does to the row: new tokens, next version, a model save."""
    row = SliceCredential.objects.get(pk=pk)
    row.access_token, row.refresh_token = access, refresh
    row.version += 1
    row.save()


@pytest.mark.parametrize("renewal_keys", [[K2, K1], [K1]], ids=["new-config", "old-config"])
def test_renewal_between_read_and_commit_wins(monkeypatch: Any, renewal_keys: list[str]) -> None:
    tokens = seed(10)
    racer = sorted(tokens)[4]
    original = rotate_keys._write_batch

    def racing(plans: Any, **kwargs: Any) -> Any:
        with override_settings(FERNET_KEYS=renewal_keys):
            renew_in_place(racer, "CANARY-renewed-access", "CANARY-renewed-refresh")
        return original(plans, **kwargs)

    monkeypatch.setattr(rotate_keys, "_write_batch", racing)
    if renewal_keys == [K1]:
        # A process still on the old key list wrote under K1: the run says it is not done.
        with pytest.raises(CommandError, match="still under older keys"):
            rotate(keys=[K2, K1])
    else:
        run = rotate(keys=[K2, K1])
        assert run.count("rotated") == 9
        assert run.count("skipped (changed during the run)") == 1
        assert run.still_old == 0
    monkeypatch.undo()

    expected = {**tokens, racer: ("CANARY-renewed-access", "CANARY-renewed-refresh")}
    assert read_with([K2, K1]) == expected
    assert rotate(keys=[K2, K1]).still_old == 0
    assert read_with([K2]) == expected


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_renewal_holding_the_row_lock_is_never_lost(monkeypatch: Any) -> None:
    """A real second connection locks the row, the command waits, then skips it."""
    tokens = seed(5)
    racer = sorted(tokens)[2]
    locked, errors = threading.Event(), []

    def renewal() -> None:
        try:
            with override_settings(FERNET_KEYS=[K2, K1]), transaction.atomic():
                SliceCredential.objects.select_for_update().without_tokens().get(pk=racer)
                locked.set()
                threading.Event().wait(0.5)  # the command is now blocked on this lock
                renew_in_place(racer, "CANARY-locked-access", "CANARY-locked-refresh")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            locked.set()
        finally:
            connection.close()

    original = rotate_keys._write_batch
    thread = threading.Thread(target=renewal)

    def racing(plans: Any, **kwargs: Any) -> Any:
        thread.start()
        assert locked.wait(10)
        return original(plans, **kwargs)

    monkeypatch.setattr(rotate_keys, "_write_batch", racing)
    run = rotate(keys=[K2, K1])
    thread.join(10)
    assert not errors
    assert run.count("skipped (changed during the run)") == 1
    assert run.count("rotated") == 4
    assert run.still_old == 0
    expected = {**tokens, racer: ("CANARY-locked-access", "CANARY-locked-refresh")}
    assert read_with([K2]) == expected


# -- output and arguments -----------------------------------------------------------------


def test_output_and_logs_never_contain_a_token(caplog: pytest.LogCaptureFixture) -> None:
    tokens = seed(12)
    rows = raw_rows()
    bad = sorted(rows)[3]
    write_raw(bad, rows[bad][0][:-9], rows[bad][1])
    caplog.set_level(logging.DEBUG)
    runs = [
        rotate("--dry-run", "-v", "2", "--mark-unreadable", keys=[K2, K1]),
        rotate("-v", "2", "--batch-size", "5", keys=[K2, K1]),
        rotate("-v", "2", "--mark-unreadable", keys=[K2, K1]),
    ]
    text = "\n".join([*(r.out + r.err for r in runs), caplog.text])
    assert f"ids {bad}" in text
    secrets_seen = [t for pair in tokens.values() for t in pair]
    ciphertexts = [c.decode() for pair in [*rows.values(), *raw_rows().values()] for c in pair]
    assert "CANARY" not in text
    assert "gAAAAA" not in text
    for value in [*secrets_seen, *ciphertexts]:
        assert value not in text


def test_lists_at_most_a_hundred_ids_unless_verbose() -> None:
    seed(105)
    short = rotate(keys=[WRONG])
    assert "and 5 more (-v 2 lists all)" in short.out
    assert len(short.unreadable_ids) == 100
    assert len(rotate("-v", "2", keys=[WRONG]).unreadable_ids) == 105


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        pytest.param(K2, "E005", id="plain-string"),
        pytest.param([K2, ""], "E006", id="blank"),
        pytest.param([K2, None], "E006", id="none"),
        pytest.param([K2, "short-key"], "E008", id="short"),
        pytest.param([K2, "slice-connect-tests-not-secret"], "E007", id="secret-key"),
    ],
)
@pytest.mark.parametrize("args", [(), ("--dry-run",), ("--mark-unreadable",)], ids=str)
def test_refuses_to_run_with_invalid_keys(
    settings: Any, keys: Any, error: str, args: tuple[str, ...]
) -> None:
    seed(3)
    before = raw_rows()
    settings.SECRET_KEY = "slice-connect-tests-not-secret"
    settings.FERNET_KEYS = keys
    out = StringIO()
    with pytest.raises(CommandError, match=rf"FERNET_KEYS is invalid.*slice_connect\.{error}"):
        call_command(COMMAND, *args, stdout=out)
    assert raw_rows() == before
    assert out.getvalue() == ""
    assert SliceCredential.objects.active().count() == 3


def test_plain_string_keys_would_have_been_one_key_per_character(settings: Any) -> None:
    """Why E005 refuses: the old field turned a string into a list of one-letter keys."""
    seed(1)
    settings.FERNET_KEYS = K1
    with pytest.raises(CommandError, match="E005"):
        call_command(COMMAND, stdout=StringIO())
    assert list(K1)[:3] == ["r", "o", "t"]


def test_lists_every_key_problem(settings: Any) -> None:
    settings.FERNET_KEYS = ["", "short", None]
    with pytest.raises(CommandError) as caught:
        call_command(COMMAND, stdout=StringIO())
    text = str(caught.value)
    assert text.count("slice_connect.E006") == 2 and text.count("slice_connect.E008") == 1
    assert "short" not in text.replace("too short", "")


@pytest.mark.parametrize("keys", [[], None])
def test_refuses_to_run_without_fernet_keys(settings: Any, keys: Any) -> None:
    seed(2)
    before = raw_rows()
    settings.FERNET_KEYS = keys
    with pytest.raises(CommandError, match="FERNET_KEYS is not set"):
        call_command(COMMAND, stdout=StringIO())
    assert raw_rows() == before


def test_rejects_a_batch_size_below_one() -> None:
    with pytest.raises(CommandError, match="--batch-size"):
        rotate("--batch-size", "0")


def test_empty_table() -> None:
    run = rotate(keys=[K2, K1])
    assert (run.count("rotated"), run.count("already current"), run.still_old) == (0, 0, 0)


@pytest.fixture
def batch_sizes(monkeypatch: Any) -> Iterator[list[int]]:
    sizes: list[int] = []
    original = rotate_keys._batches

    def counting(batch_size: int) -> Iterator[Any]:
        for batch in original(batch_size):
            sizes.append(len(batch))
            yield batch

    monkeypatch.setattr(rotate_keys, "_batches", counting)
    yield sizes


def test_batches_walk_ids_in_order(batch_sizes: list[int]) -> None:
    seed(25)
    rotate("--batch-size", "10", keys=[K2, K1])
    # The rotation pass and the final re-scan each read 10 + 10 + 5.
    assert batch_sizes == [10, 10, 5, 10, 10, 5]


def test_exact_multiple_of_the_batch_size(batch_sizes: list[int]) -> None:
    seed(20)
    assert rotate("--batch-size", "10", keys=[K2, K1]).count("rotated") == 20
    assert batch_sizes == [10, 10, 10, 10]


def test_null_columns_count_as_current() -> None:
    primary = MultiFernet([fernet(K2)])
    keyring = MultiFernet([fernet(K2), fernet(K1)])
    plan = rotate_keys.plan_row(7, (None, None), primary, keyring)
    assert plan == rotate_keys.Plan(7, (None, None), rotated=None, unreadable=False)
