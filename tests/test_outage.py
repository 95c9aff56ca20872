"""B7 (docs/threat-model.rst R32, R34): Slice's token endpoint down for K, on a simulated clock.

1,000 credentials whose refresh tokens were rotated between 0 and 7 days ago (evenly spread,
one every 604.8 s) meet an outage of K = 1 h, 24 h, 6 d, 8 d or 15 d that starts at ``T0``.

* The token endpoint is a strict fake in ``responses`` (:class:`FakeSlice`): every refresh
  issues a fresh pair and kills the presented refresh token, as Slice does; a token is
  refused once its 14 days are over; during the outage every request gets a 503.
* The clock is time-machine's, frozen: the test moves it. Beats come every hour.
* While the endpoint is down, a beat is what the deployment does, in-process: the due
  selection (``due_for_renewal().iter_ids()``) and ``services.renew_with_result`` for each
  selected id, as ``renew_credential`` would; a transient failure simply waits for the next
  beat (the task's own retries are left out: they only add 503s inside the same hour).
* From the recovery on, beats are the real sweep, ``tasks.renew_due_credentials``, with
  ``renew_credential.apply_async`` patched to record each countdown; every recorded task then
  runs (the real task function) at ``sweep time + countdown`` on the simulated clock, so the
  fake endpoint sees the request rate the schedule would produce.

The model (R32): a credential is lost exactly when its refresh token expires at or before the
recovery (``refresh_token_expires_at <= T0 + K``: the sandbox and Slice accept a refresh token
only while ``created + lifetime > now``). Every other credential must be healthy (active,
refresh token alive, stored token == the server's live token) within two beats of the
recovery, with no request ever refused by the server (no invalid_grant, no lost rotation).

Rate: ``RENEW_RATE_LIMIT`` is 1/s here (with ``RENEW_SPREAD`` 30 min, a sweep takes up to
1,800 credentials). With the default 10/s a backlog of at most 1,000 credentials would be
sent within 100 s, so "spread over at least 10 minutes" could not hold at this population
size; an operator sizes the rate to the population, and 1/s is that size for 1,000.

Profiles (``tests/profiles.py``): the long profile (``SLICE_CONNECT_TEST_PROFILE=long``, as
``.ci/run`` runs it) uses the 1,000 credentials above; the quick default uses 250 at
0.25/s, the same population per unit of rate, so every assertion keeps its meaning (the
backlog is still spread over at least 10 minutes) at a quarter of the cost.

Speed: a beat while the endpoint is down changes nothing but ``active`` -> ``needs_reauth``
(``refresh_expired``, no request), and that depends on the clock alone, not on how often
beats come. So the outage runs fewer beats than the deployment would: every third hourly
beat for K = 1 h and 24 h (``T0``, ``T0`` + 3 h, ...), and for the long outages (6 d, 8 d,
15 d) the first, the middle and the last hourly beat of the outage (the last one hour before
the recovery). From the recovery on, every hourly beat runs. Every hourly beat during the
outages would mean ~340,000 failed attempts (2-3 ms each on SQLite, more on PostgreSQL:
many minutes) for the same outcome.
Run with ``-s`` to see one ``OUTAGE`` line per K.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock
from urllib.parse import parse_qs

import pytest
import responses
import time_machine
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone as dj_timezone

from slice_connect import services, tasks
from slice_connect.conf import app_settings
from slice_connect.exceptions import NeedsReauth, TransientError
from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL
from tests.profiles import pick

pytestmark = pytest.mark.django_db

T0 = datetime(2031, 1, 6, 0, 0, tzinfo=timezone.utc)
CREDENTIALS = pick(250, 1000)
ROTATION_AGES = timedelta(days=7)  # ages spread evenly over [0, 7 d)
LIFETIME = timedelta(days=14)
ACCESS_LIFETIME = timedelta(hours=1)
BEAT = timedelta(hours=1)
RATE = 1.0
#: The battery's rate: 1/s per 1,000 credentials (see "Profiles" above).
BATTERY_RATE = RATE * CREDENTIALS / 1000
SPREAD = 1800

Status = SliceCredential.Status
Reason = SliceCredential.Reason


# -- the fake Slice ------------------------------------------------------------------------


@dataclass
class Family:
    """One user's chain of refresh tokens at the fake Slice; only the newest one is live."""

    live: str
    expires_at: datetime
    generation: int = 0


@dataclass
class FakeSlice:
    """A strict rotating token endpoint (grace 0) that can be switched off."""

    down: bool = False
    families: dict[int, Family] = field(default_factory=dict)
    by_token: dict[str, int] = field(default_factory=dict)
    #: Simulated time of every request that reached the endpoint.
    times: list[datetime] = field(default_factory=list)
    per_hour: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def enroll(self, family: int, issued_at: datetime) -> str:
        token = f"refresh-{family:04d}-0"
        self.families[family] = Family(token, issued_at + LIFETIME)
        self.by_token[token] = family
        return token

    def callback(self, request: Any) -> tuple[int, dict[str, str], str]:
        now = dj_timezone.now()
        self.times.append(now)
        self.per_hour[int((now - T0) / BEAT)] += 1
        headers = {"Content-Type": "application/json"}
        if self.down:
            self.outcomes["503"] += 1
            return 503, headers, json.dumps({"error": "temporarily_unavailable"})
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        presented = parse_qs(body)["refresh_token"][0]
        number = self.by_token.pop(presented, -1)  # a refresh token works once
        family = self.families.get(number)
        if family is None or family.live != presented or family.expires_at <= now:
            self.outcomes["invalid_grant"] += 1
            return 400, headers, json.dumps({"error": "invalid_grant"})
        family.generation += 1
        family.live = f"refresh-{number:04d}-{family.generation}"
        family.expires_at = now + LIFETIME
        self.by_token[family.live] = number
        self.outcomes["200"] += 1
        payload = {
            "access_token": f"access-{number:04d}-{family.generation}",
            "refresh_token": family.live,
            "token_type": "Bearer",
            "expires_in": int(ACCESS_LIFETIME.total_seconds()),
        }
        return 200, headers, json.dumps(payload)

    def requests_since(self, start: datetime) -> list[datetime]:
        return [t for t in self.times if t >= start]


@pytest.fixture
def fake_slice() -> Iterator[FakeSlice]:
    fake = FakeSlice()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock_:
        mock_.add_callback(responses.POST, TOKEN_URL, callback=fake.callback)
        yield fake


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture(autouse=True)
def seeded_jitter() -> Iterator[None]:
    """The sweep's jitter comes from ``random``: seed it, so every run prints the same."""
    state = random.getstate()
    random.seed(20310106)
    yield
    random.setstate(state)


@pytest.fixture
def renewal_settings(settings: Any) -> None:
    settings.SLICE_CONNECT = {
        **settings.SLICE_CONNECT,
        "RENEW_RATE_LIMIT": RATE,
        "RENEW_SPREAD": SPREAD,
    }


def age_of(index: int) -> timedelta:
    return ROTATION_AGES * index / CREDENTIALS


def populate(fake: FakeSlice) -> dict[int, int]:
    """Bulk-create the users and credentials at ``T0``; return credential pk -> family."""
    user_model = get_user_model()
    user_model.objects.bulk_create(
        user_model(username=f"outage-{i:04d}", email=f"outage-{i:04d}@example.com", password="!")
        for i in range(CREDENTIALS)
    )
    users = dict(
        user_model.objects.filter(username__startswith="outage-").values_list("username", "pk")
    )
    rows = []
    for i in range(CREDENTIALS):
        issued = T0 - age_of(i)
        rows.append(
            SliceCredential(
                user_id=users[f"outage-{i:04d}"],
                access_token=f"access-{i:04d}-0",
                refresh_token=fake.enroll(i, issued),
                access_token_expires_at=issued + ACCESS_LIFETIME,
                refresh_token_expires_at=issued + LIFETIME,
                linked_at=issued,
            )
        )
    SliceCredential.objects.bulk_create(rows)
    return {
        pk: int(username.rsplit("-", 1)[1])
        for pk, username in SliceCredential.objects.values_list("pk", "user__username")
    }


def predicted_lost(recovery: datetime) -> int:
    """The model: refresh tokens that expire at or before the recovery are gone."""
    return sum(1 for i in range(CREDENTIALS) if T0 - age_of(i) + LIFETIME <= recovery)


@pytest.fixture
def rate(renewal_settings: None, slice_settings: Callable[..., None]) -> float:
    """The battery's ``RENEW_RATE_LIMIT`` (1/s per 1,000 credentials)."""
    slice_settings(RENEW_RATE_LIMIT=BATTERY_RATE)
    return BATTERY_RATE


# -- beats -----------------------------------------------------------------------------------


@dataclass
class Tally:
    transient: int = 0
    refresh_expired: int = 0
    renewed: int = 0
    skipped: int = 0
    other: list[str] = field(default_factory=list)


def in_process_beat(tally: Tally) -> None:
    """The due selection, then ``renew_with_result`` for each id (what the task does)."""
    for pk in list(SliceCredential.objects.due_for_renewal().iter_ids()):
        try:
            result = services.renew_by_id(pk)
        except TransientError:
            tally.transient += 1
        except NeedsReauth as exc:
            if exc.reason == Reason.REFRESH_EXPIRED:
                tally.refresh_expired += 1
            else:
                tally.other.append(f"needs_reauth:{exc.reason}")
        else:
            if result.renewed:
                tally.renewed += 1
            else:
                tally.skipped += 1


@dataclass
class Sweep:
    at: datetime
    countdowns: list[tuple[float, int]]
    results: Counter[str]


def real_sweep(clock: time_machine.Traveller, at: datetime) -> Sweep:
    """``tasks.renew_due_credentials`` at ``at``; then each task at ``at + countdown``."""
    clock.move_to(at)
    recorded: list[tuple[float, int]] = []

    def record(args: tuple[int], countdown: float | None = None, **options: Any) -> None:
        assert not options, options
        recorded.append((float(countdown or 0.0), args[0]))

    with mock.patch.object(tasks.renew_credential, "apply_async", side_effect=record):
        scheduled = tasks.renew_due_credentials()
    rate = app_settings.RENEW_RATE_LIMIT
    assert scheduled <= rate * SPREAD
    # R35: no countdown outlives the broker's visibility timeout (Redis would redeliver it).
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert all(countdown < visibility for countdown, _pk in recorded)
    results: Counter[str] = Counter()
    for countdown, pk in sorted(recorded):
        clock.move_to(at + timedelta(seconds=countdown))
        # The real task body; a retry would need a broker and fails the test loudly.
        results[str(tasks.renew_credential(pk))] += 1
    return Sweep(at, recorded, results)


def max_in_window(times: list[datetime], start: datetime, width: float) -> int:
    """Most requests in any window ``[t, t + width)`` (sliding, from each request)."""
    offsets = sorted((t - start).total_seconds() for t in times)
    best = 0
    j = 0
    for i, t in enumerate(offsets):
        j = max(j, i)
        while j < len(offsets) and offsets[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


def max_per_second(times: list[datetime], start: datetime) -> int:
    """Most requests in one whole second counted from the sweep (aligned buckets)."""
    buckets = Counter(int((t - start).total_seconds()) for t in times)
    return max(buckets.values(), default=0)


# -- the battery -----------------------------------------------------------------------------


def health(fake: FakeSlice, family_of: dict[int, int], now: datetime) -> tuple[int, list[str]]:
    """How many credentials are healthy, and what is wrong with the others (by reason)."""
    healthy = 0
    problems: list[str] = []
    for row in SliceCredential.objects.all():
        family = fake.families[family_of[row.pk]]
        if row.status != Status.ACTIVE:
            problems.append(f"{row.status}:{row.status_reason}")
        elif row.refresh_token_expires_at <= now:
            problems.append("refresh_expired_but_active")
        elif row.refresh_token != family.live or family.expires_at <= now:
            problems.append("not_the_server_token")
        elif row.renewal_started_at is not None:
            problems.append("journal_left_set")
        else:
            healthy += 1
    return healthy, problems


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(timedelta(hours=1), id="1h"),
        pytest.param(timedelta(hours=24), id="24h"),
        pytest.param(timedelta(days=6), id="6d"),
        pytest.param(timedelta(days=8), id="8d"),
        pytest.param(timedelta(days=15), id="15d"),
    ],
)
def test_token_endpoint_down_for_k(
    outage: timedelta,
    fake_slice: FakeSlice,
    clock: time_machine.Traveller,
    rate: float,
) -> None:
    started = time.perf_counter()
    family_of = populate(fake_slice)
    assert app_settings.RENEW_WITHIN == timedelta(days=7)
    assert app_settings.REFRESH_TOKEN_LIFETIME == LIFETIME
    recovery = T0 + outage
    predicted = predicted_lost(recovery)

    # The outage: the endpoint answers 503 from T0 until the recovery.
    fake_slice.down = True
    if outage <= timedelta(days=1):
        beats = [T0 + n * BEAT for n in range(0, outage // BEAT, 3)]
    else:  # the first, the middle and the last (see the module docstring)
        beats = [T0, T0 + (outage // BEAT // 2) * BEAT, recovery - BEAT]
    tally = Tally()
    for beat in beats:
        clock.move_to(beat)
        requests_before = len(fake_slice.times)
        transient_before = tally.transient
        in_process_beat(tally)
        # One attempt per due credential per beat, no retry storm against a dead endpoint:
        # a 5xx may have been processed (a lost answer), so the attempt posts once more at
        # once with the same token, and never a third time.
        assert len(fake_slice.times) - requests_before == 2 * (tally.transient - transient_before)
    beats_down = len(beats)
    assert tally.other == [] and tally.renewed == 0
    assert fake_slice.outcomes.keys() <= {"503"}
    # Each credential whose attempts all failed keeps its journal stamp (its token may have
    # been spent); the recovery's renewal clears it (``health`` checks every row).
    attempted_and_alive = SliceCredential.objects.active().filter(
        refresh_token_expires_at__lte=beats[-1] + app_settings.RENEW_WITHIN
    )
    assert SliceCredential.objects.exclude(renewal_started_at=None).count() == (
        attempted_and_alive.count() if tally.transient else 0
    )

    # Recovery: beats are the real sweep from now on, every hour.
    fake_slice.down = False
    sweeps = [real_sweep(clock, recovery), real_sweep(clock, recovery + BEAT)]
    end = recovery + 2 * BEAT
    clock.move_to(end)

    lost = SliceCredential.objects.filter(status=Status.NEEDS_REAUTH)
    reasons = Counter(lost.values_list("status_reason", flat=True))
    healthy, problems = health(fake_slice, family_of, end)
    after = fake_slice.requests_since(recovery)
    first = sweeps[0]
    backlog = first.results["renewed"]
    first_requests = [t for t in after if t < recovery + BEAT]
    spread = max((c for c, _pk in first.countdowns), default=0.0)
    request_spread = (
        (max(first_requests) - min(first_requests)).total_seconds() if first_requests else 0.0
    )
    seconds = time.perf_counter() - started
    label = f"{outage.days}d" if outage > timedelta(days=1) else f"{outage // BEAT}h"
    print(
        f"\nOUTAGE K={label} credentials={CREDENTIALS} needs_reauth={lost.count()} "
        f"predicted={predicted} requests_after_recovery={len(after)} "
        f"requests_during_outage={fake_slice.outcomes['503']} beats_down={beats_down} "
        f"backlog={backlog} backlog_spread_s={request_spread:.0f} "
        f"max_per_s={max_per_second(first_requests, recovery)} "
        f"max_per_10s={max_in_window(after, recovery, 10.0)} "
        f"peak_requests_per_hour={max(fake_slice.per_hour.values(), default=0)} "
        f"seconds={seconds:.1f}"
    )

    # Exactly the model's losses, all for the one reason the model allows; 0 crashes.
    assert lost.count() == predicted, reasons
    assert set(reasons) <= {Reason.REFRESH_EXPIRED}
    assert healthy == CREDENTIALS - predicted, Counter(problems)
    assert Counter(problems) == Counter(
        {f"{Status.NEEDS_REAUTH}:{Reason.REFRESH_EXPIRED}": predicted}
    )
    if outage <= timedelta(days=6):
        assert predicted == 0 and healthy == CREDENTIALS
    # The server never refused a token the client presented: no invalid_grant, no rotation lost.
    assert fake_slice.outcomes["invalid_grant"] == 0
    for sweep in sweeps:
        assert set(sweep.results) <= {"renewed", "needs_reauth", "skipped"}, sweep.results
    assert sum(s.results["needs_reauth"] for s in sweeps) + tally.refresh_expired == predicted
    # Two beats after the recovery nothing is overdue: whatever was due at the second beat
    # was renewed by it.
    overdue = SliceCredential.objects.active().filter(
        refresh_token_expires_at__lte=recovery + BEAT + app_settings.RENEW_WITHIN
    )
    assert not overdue.exists()

    # After the recovery, Slice sees at most RENEW_RATE_LIMIT requests a second ...
    for sweep in sweeps:
        window = [t for t in after if sweep.at <= t < sweep.at + BEAT]
        assert max_per_second(window, sweep.at) <= math.ceil(rate)
        assert max_in_window(window, sweep.at, 60.0) <= 60 * rate + 1
    # ... one per renewed credential, and a backlog is spread over >= 10 minutes.
    assert len(after) == sum(s.results["renewed"] for s in sweeps)
    if backlog >= 600 * rate:
        assert spread >= 600 and request_spread >= 600, (spread, request_spread)
    # Slots k / rate plus jitter in [0, 1 / rate): first to last is over (backlog - 2) / rate.
    assert request_spread >= (backlog - 2) / rate


def test_sweep_gives_expired_links_no_slot(
    fake_slice: FakeSlice,
    clock: time_machine.Traveller,
    renewal_settings: None,
    make_user: Any,
    make_credential: Any,
) -> None:
    """Regression: dead links queued first used to push a live one past its deadline.

    Three refresh tokens expired during an outage; a fourth expires 2.5 s after the sweep.
    At 1 request/s the dead ones took slots 0-2 and the live one's task ran at 3-4 s: lost.
    """
    deadlines = [-3, -2, -1, 2.5, 86400]
    pks = []
    for family, seconds in enumerate(deadlines):
        expires = T0 + timedelta(seconds=seconds)
        pks.append(
            make_credential(
                make_user(),
                refresh_token=fake_slice.enroll(family, expires - LIFETIME),
                refresh_token_expires_at=expires,
            ).pk
        )

    sweep = real_sweep(clock, T0)

    countdowns = dict((pk, countdown) for countdown, pk in sweep.countdowns)
    assert [countdowns[pk] for pk in pks[:3]] == [0.0, 0.0, 0.0]
    assert 0 <= countdowns[pks[3]] < 1 / RATE <= countdowns[pks[4]] < 2 / RATE
    assert sweep.results == Counter({"needs_reauth": 3, "renewed": 2})
    assert fake_slice.outcomes == Counter({"200": 2})
    statuses = dict(SliceCredential.objects.values_list("pk", "status_reason"))
    assert [statuses[pk] for pk in pks] == [Reason.REFRESH_EXPIRED] * 3 + [Reason.NONE] * 2
