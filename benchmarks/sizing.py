"""Sizing: what 10,000, 1,000,000 and 10,000,000 linked users cost (docs/topics/sizing.rst).

Worker steps, run by ``benchmarks/run.py`` in a fresh process each, like those of
``benchmarks/worker.py``::

    python -m benchmarks.sizing policy                     # the renewal settings in force
    python -m benchmarks.sizing seed-bulk --n N --due D    # N links, D of them due
    python -m benchmarks.sizing sweep --due D --mode all|default
    python -m benchmarks.sizing publish --n N --broker redis://...
    python -m benchmarks.sizing render      # sizing.rst again from sizing.json, no run

``seed-bulk`` builds the table in SQL on PostgreSQL (``INSERT ... SELECT`` over
``generate_series``): the tokens are encrypted once, in Python, by the model field itself,
and every row gets the same ciphertext, so a million rows take a minute, not an hour.
The sweep never loads a token, so sharing one is harmless here.

The rest of the module is arithmetic on measured figures: :func:`derive` turns the
policy, the measured renewal rates and the measured sweeps into the sizing table, and
:func:`tables` into the tables ``run.py`` prints and writes to ``benchmarks/sizing.rst``
(included by docs/topics/sizing.rst). Every number in those tables is either measured by
this run or computed here from what it measured, by the formulas named in the notes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import timedelta
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

#: The beat interval of the README's schedule (``crontab(minute=17)``: hourly).
BEAT_INTERVAL = 3600.0
#: Table sizes of the sizing table (linked users).
USERS = (10_000, 1_000_000, 10_000_000)
#: The suggested RENEW_RATE_LIMIT schedules twice what falls due per beat run: a backlog
#: (an outage of Slice or of the workers) is then cleared as fast as it built up.
HEADROOM = 2.0
#: Slice latencies (seconds) for the worker table; the benchmark measures 0 and 50 ms.
EXTRA_LATENCY = 0.25
DAY = 86_400.0


# -- worker steps ----------------------------------------------------------------------


def step_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The renewal policy in force (the package defaults, as benchmarks/settings.py keeps)."""
    from slice_connect import oauth
    from slice_connect.conf import app_settings

    return {
        "renew_within": app_settings.RENEW_WITHIN.total_seconds(),
        "refresh_lifetime": app_settings.REFRESH_TOKEN_LIFETIME.total_seconds(),
        "rate_limit": app_settings.RENEW_RATE_LIMIT,
        "spread": app_settings.RENEW_SPREAD.total_seconds(),
        "leeway": app_settings.ACCESS_TOKEN_LEEWAY.total_seconds(),
        "access_lifetime": float(oauth.DEFAULT_EXPIRES_IN),
        "beat_interval": BEAT_INTERVAL,
    }


def _constant_columns(obj: Any, skip: set[str]) -> tuple[list[str], list[Any]]:
    """Column names and database values of ``obj``'s concrete fields, except ``skip``.

    Each value goes through the field's own ``pre_save`` and ``get_db_prep_save``, as a
    save would: the token fields encrypt here, once.
    """
    from django.db import connection

    columns, values = [], []
    for field in obj._meta.concrete_fields:
        if field.primary_key or field.attname in skip:
            continue
        columns.append(connection.ops.quote_name(field.column))
        values.append(field.get_db_prep_save(field.pre_save(obj, True), connection))
    return columns, values


def step_seed_bulk(args: argparse.Namespace) -> dict[str, Any]:
    """Replace all users and links with ``n`` users, each linked; ``due`` of them due.

    Every link was last renewed one refresh-token lifetime before its refresh token
    expires (as after a rotation), so ``due_for_renewal`` evaluates both of its conditions
    for real. The due ones expire between 1 hour and RENEW_WITHIN - 1 hour from now (a
    backlog, most urgent first); the others between RENEW_WITHIN + 1 hour and the
    lifetime - 1 hour (renewed within the last week).
    """
    import secrets

    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from benchmarks.worker import _truncate, check
    from slice_connect.conf import app_settings
    from slice_connect.models import SliceCredential

    check(connection.vendor == "postgresql", "seed-bulk needs PostgreSQL (generate_series)")
    n, due = args.n, args.due
    check(0 <= due <= n, f"--due {due} must be between 0 and --n {n}")
    began = time.perf_counter()
    _truncate()
    now = timezone.now()
    hour = timedelta(hours=1)
    within = app_settings.RENEW_WITHIN
    lifetime = app_settings.REFRESH_TOKEN_LIFETIME
    check(within > 2 * hour and lifetime - within > 2 * hour, "renewal window too short")

    user_model = get_user_model()
    user_table = connection.ops.quote_name(user_model._meta.db_table)
    username = connection.ops.quote_name(user_model._meta.get_field("username").column)
    user_columns, user_values = _constant_columns(
        user_model(username="bench", password="!"), {"username"}
    )
    template = SliceCredential(
        user_id=0,
        access_token=secrets.token_urlsafe(32),
        refresh_token=secrets.token_urlsafe(32),
        access_token_expires_at=now - timedelta(minutes=5),
        refresh_token_expires_at=now,
    )
    fixed = {"id", "user_id", "refresh_token_expires_at", "last_renewed_at"}
    cred_columns, cred_values = _constant_columns(template, fixed)
    cred_table = connection.ops.quote_name(SliceCredential._meta.db_table)
    q = connection.ops.quote_name

    with transaction.atomic(), connection.cursor() as cursor:
        placeholders = ", ".join(["%s"] * len(user_values))
        cursor.execute(
            f"INSERT INTO {user_table} ({username}, {', '.join(user_columns)}) "  # noqa: S608
            f"SELECT 'bench' || g, {placeholders} FROM generate_series(0, %s - 1) AS g",
            [*user_values, n],
        )
        users_seconds = time.perf_counter() - began
        # k = 0 .. n-1 in user id order; the first ``due`` links are due.
        placeholders = ", ".join(["%s"] * len(cred_values))
        cursor.execute(
            f"INSERT INTO {cred_table} ({q('user_id')}, {q('refresh_token_expires_at')}, "  # noqa: S608
            f"{q('last_renewed_at')}, {', '.join(cred_columns)}) "
            f"SELECT id, expires, expires - %s, {placeholders} FROM ("
            "  SELECT id, CASE WHEN k < %s"
            "    THEN %s + (k::float8 / GREATEST(%s, 1)) * %s * interval '1 second'"
            "    ELSE %s + ((k - %s)::float8 / GREATEST(%s, 1)) * %s * interval '1 second'"
            "  END AS expires"
            f"  FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM {user_table}) AS u"
            ") AS rows",
            [
                lifetime,
                *cred_values,
                due,
                now + hour,
                due,
                (within - 2 * hour).total_seconds(),
                now + within + hour,
                due,
                n - due,
                (lifetime - within - 2 * hour).total_seconds(),
            ],
        )
    insert_seconds = time.perf_counter() - began
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    seconds = time.perf_counter() - began
    rows = SliceCredential.objects.count()
    check(rows == n, f"seeded {rows} links, expected {n}")
    found = SliceCredential.objects.due_for_renewal().count()
    check(found == due, f"seeded {due} due links but {found} are due")
    return {
        "n": n,
        "due": due,
        "users_seconds": users_seconds,
        "insert_seconds": insert_seconds,
        "seconds": seconds,
    }


class CountingDispatch:
    """Stands in for ``renew_credential.apply_async``: counts, keeps the last countdown."""

    def __init__(self) -> None:
        self.count = 0
        self.last_countdown = 0.0

    def __call__(self, args: tuple[int, ...], countdown: float = 0, **kwargs: Any) -> None:
        self.count += 1
        self.last_countdown = max(self.last_countdown, countdown)


def step_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """One beat sweep (``tasks.renew_due_credentials``) over the seeded table, not sending.

    ``--mode all``: RENEW_RATE_LIMIT and RENEW_SPREAD so large that every due link is
    dispatched (the worst case: a backlog of ``due`` links in one run). ``--mode
    default``: the settings in force, which dispatch at most rate x spread per run.
    """
    from unittest import mock

    from django.conf import settings
    from django.test import override_settings

    from benchmarks.worker import check, current_rss_kib, peak_rss_kib
    from slice_connect import tasks
    from slice_connect.conf import app_settings

    overrides = {}
    if args.mode == "all":
        overrides = {"RENEW_RATE_LIMIT": 1e9, "RENEW_SPREAD": 1e9}
    baseline = current_rss_kib()
    counter = CountingDispatch()
    with (
        override_settings(SLICE_CONNECT={**settings.SLICE_CONNECT, **overrides}),
        mock.patch.object(tasks.renew_credential, "apply_async", counter),
    ):
        capacity = int(app_settings.RENEW_RATE_LIMIT * app_settings.RENEW_SPREAD.total_seconds())
        began = time.perf_counter()
        scheduled = tasks.renew_due_credentials()
        seconds = time.perf_counter() - began
    expected = min(args.due, max(capacity, 1))
    check(
        scheduled == counter.count == expected,
        f"{args.due} due (capacity {capacity}): sweep reported {scheduled}, "
        f"dispatched {counter.count}, expected {expected}",
    )
    return {
        "mode": args.mode,
        "due": args.due,
        "dispatched": counter.count,
        "seconds": seconds,
        "per_second": counter.count / seconds if seconds else 0.0,
        "last_countdown": counter.last_countdown,
        "baseline_kib": baseline,
        "peak_kib": peak_rss_kib(),
    }


def step_publish(args: argparse.Namespace) -> dict[str, Any]:
    """What sending costs: ``n`` ``renew_credential.apply_async`` calls to a real broker.

    The messages go to a queue of this run's own (a random name) on ``--broker``, with the
    sweep's countdowns; nothing consumes them, and the queue is deleted afterwards.
    """
    import secrets

    import redis
    from celery import Celery

    from benchmarks.worker import check
    from slice_connect import tasks

    queue = f"bench-sizing-{secrets.token_hex(6)}"
    app = Celery("bench-sizing", broker=args.broker, set_as_current=True)
    app.conf.task_routes = {tasks.renew_credential.name: {"queue": queue}}
    app.conf.broker_connection_retry_on_startup = False
    client = redis.Redis.from_url(args.broker)
    try:
        for i in range(20):  # connect, declare the queue
            tasks.renew_credential.apply_async((i + 1,), countdown=i / 10)
        began = time.perf_counter()
        for i in range(args.n):
            tasks.renew_credential.apply_async((i + 1,), countdown=i / 10)
        seconds = time.perf_counter() - began
        queued = client.llen(queue)
        size = client.memory_usage(queue) or 0
    finally:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        app.close()
    check(queued == args.n + 20, f"published {args.n + 20} messages, {queued} queued")
    return {
        "n": args.n,
        "seconds": seconds,
        "per_second": args.n / seconds,
        "message_bytes": size / queued if queued else 0.0,
    }


def render(path: str) -> str:
    """The sizing tables of a ``sizing.json`` a ``--write`` run left, as reST (no run)."""
    from benchmarks.run import Results, render_sizing

    with open(path) as source:
        raw = json.load(source)
    return render_sizing(Results(info=raw["info"], commit=raw["commit"], sizing=raw["sizing"]))


STEPS = {
    "policy": step_policy,
    "seed-bulk": step_seed_bulk,
    "sweep": step_sweep,
    "publish": step_publish,
}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.worker import run_step

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"]:
        # Re-render benchmarks/sizing.rst from benchmarks/sizing.json (wording changes).
        here = os.path.dirname(os.path.abspath(__file__))
        text = render(os.path.join(here, "sizing.json"))
        with open(os.path.join(here, "sizing.rst"), "w") as out:
            out.write(text)
        return 0
    parser = argparse.ArgumentParser(description="Run one sizing step.")
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--due", type=int, default=0)
    parser.add_argument("--mode", choices=("all", "default"), default="all")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    return run_step(STEPS, parser.parse_args(argv))


# -- arithmetic ------------------------------------------------------------------------


def steady_due(n: int, policy: dict[str, Any]) -> int:
    """Links due at an hourly beat run in the steady state: n x interval / RENEW_WITHIN."""
    return max(1, round(n * policy["beat_interval"] / policy["renew_within"]))


def worker_model(measured: dict[str, Any]) -> dict[str, Any]:
    """What one worker renews per second at a Slice latency, from the measured rates.

    A renewal occupies its thread for the round trip to Slice plus ``s`` seconds of its
    own (CPU, database, waiting for the GIL). With ``T`` threads a process renews at most
    ``T / (latency + s)`` a second, and never more than it does with Slice next door
    (``R_0``: one core, one GIL). ``s`` comes from the measured rate at the measured
    latency: ``s = T / R_L - L``. A prefork child renews one at a time:
    ``1 / (latency + t1)``, ``t1`` the measured sequential renewal.
    """
    threads = measured["threads"]
    r0 = measured["rate_0"]
    latency = measured["latency"]
    own = max(threads / measured["rate_latency"] - latency, 0.0)
    return {"threads": threads, "r0": r0, "latency": latency, "own": own, "t1": measured["t1"]}


def process_rate(model: dict[str, Any], latency: float) -> float:
    """A threaded worker process's renewals per second with Slice ``latency`` seconds away."""
    if latency <= 0:
        return float(model["r0"])
    return min(model["r0"], model["threads"] / (latency + model["own"]))


def child_rate(model: dict[str, Any], latency: float) -> float:
    """A prefork child's renewals per second (one at a time)."""
    return 1.0 / (latency + model["t1"])


def derive(
    n: int,
    policy: dict[str, Any],
    model: dict[str, Any],
    sweep: dict[str, Any],
    publish: dict[str, Any] | None,
) -> dict[str, Any]:
    """The sizing of ``n`` linked users (see the notes of :func:`tables` for the formulas)."""
    within, interval, spread = policy["renew_within"], policy["beat_interval"], policy["spread"]
    average = n / within
    per_run = n * interval / within
    rate_limit = max(policy["rate_limit"], math.ceil(HEADROOM * per_run / spread))
    capacity = rate_limit * spread
    backlog_day = n * DAY / within
    spare = capacity - per_run
    catch_up_hours = math.ceil(backlog_day / spare) * interval / 3600 if spare > 0 else math.inf
    api_per_percent = 0.01 * n / (policy["access_lifetime"] - policy["leeway"])
    latencies = sorted({model["latency"], EXTRA_LATENCY})
    dispatched = min(per_run, capacity)
    return {
        "n": n,
        "average": average,
        "per_run": per_run,
        "default_ok": policy["rate_limit"] * spread >= per_run,
        "rate_limit": rate_limit,
        "capacity": capacity,
        "window": per_run / rate_limit,
        "catch_up_hours": catch_up_hours,
        "api_per_percent": api_per_percent,
        # Lists in the order of ``latencies`` (JSON keeps them as they are).
        "latencies": latencies,
        "processes": [math.ceil(rate_limit / process_rate(model, lat)) for lat in latencies],
        "children": [math.ceil(rate_limit / child_rate(model, lat)) for lat in latencies],
        "busy_connections": [rate_limit * (lat + model["own"]) for lat in latencies],
        "sweep_seconds": dispatched / sweep["per_second"],
        "sweep_sending_seconds": (
            dispatched * (1 / sweep["per_second"] + 1 / publish["per_second"]) if publish else None
        ),
        "sweep_peak_kib": sweep["peak_kib"],
    }


def sizing_results(
    policy: dict[str, Any],
    throughput: list[dict[str, Any]],
    crypto: dict[str, Any],
    sweeps: dict[int, dict[str, Any]],
    publish: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything the sizing tables need, from this run's measurements."""
    plain = [r for r in throughput if r["label"] == "PostgreSQL"]
    zero = max(plain, key=lambda r: r["rows"]) if plain else None
    # The threaded row at the same concurrency, not the one-at-a-time row after it.
    slow = [
        r
        for r in throughput
        if r["label"].startswith("PostgreSQL, token server +")
        and zero is not None
        and r["concurrency"] == zero["concurrency"]
    ]
    if zero is None or not slow or not crypto or not sweeps:
        raise ValueError("the sizing needs the PostgreSQL throughput, crypto and sweep steps")
    late = slow[-1]
    latency = float(late["label"].rsplit("+", 1)[1].split()[0]) / 1000
    measured = {
        "threads": zero["concurrency"],
        "rate_0": zero["renew_per_second"],
        "rate_latency": late["renew_per_second"],
        "latency": latency,
        "t1": crypto["renewal_ms"] / 1000,
    }
    sizing = {
        "policy": policy,
        "measured": measured,
        "model": worker_model(measured),
        "sweeps": {str(n): sweep for n, sweep in sweeps.items()},
        "publish": publish,
    }
    return {**sizing, "users": users(sizing)}


def users(sizing: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`derive` for each size of :data:`USERS`, from the largest table's sweep."""
    largest = max(sizing["sweeps"], key=int)
    sweep = sizing["sweeps"][largest]["all"]
    return [
        derive(n, sizing["policy"], sizing["model"], sweep, sizing.get("publish")) for n in USERS
    ]


def _rate(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.2g}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def tables(sizing: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, note) of the sizing tables."""
    out = []
    policy, model, m = sizing["policy"], sizing["model"], sizing["measured"]
    publish = sizing.get("publish")
    # The setup and the sweeps, as measured.
    rows = []
    for n, s in sorted((int(n), s) for n, s in sizing["sweeps"].items()):
        for key, label in (("all", "every link due, one run"), ("default", "hourly run")):
            sweep, seed = s[key], s[f"seed_{key}"]
            rows.append(
                [
                    f"{n:,}",
                    label,
                    f"{seed['due']:,}",
                    f"{sweep['dispatched']:,}",
                    f"{sweep['seconds']:.2f} s",
                    f"{sweep['per_second']:,.0f}",
                    _mib(sweep["peak_kib"]),
                    _mib(sweep["peak_kib"] - sweep["baseline_kib"]),
                    f"{seed['seconds']:.0f} s",
                ]
            )
    out.append(
        (
            "The beat sweep on a large table",
            [
                "links",
                "run",
                "due",
                "dispatched",
                "sweep time",
                "dispatches/s",
                "peak RSS",
                "growth",
                "table setup",
            ],
            rows,
            "`tasks.renew_due_credentials` in a fresh process on PostgreSQL, with "
            "`renew_credential.apply_async` replaced by a counter (nothing is sent to a "
            "broker; a real broker adds its publish time per message). 'every link due': "
            "RENEW_RATE_LIMIT and RENEW_SPREAD lifted so one run dispatches the whole "
            "backlog; 'hourly run': the default settings, with the links due at an hourly "
            "run in the steady state (links x 3600 s / RENEW_WITHIN). Growth: peak RSS "
            "minus RSS before the sweep. Table setup: users and links inserted with "
            "INSERT ... SELECT over generate_series (tokens encrypted once), VACUUM ANALYZE."
            + (
                f" Sending: {publish['n']:,} `renew_credential.apply_async` calls with "
                f"countdowns to a local Redis took {publish['seconds']:.1f} s "
                f"({publish['per_second']:,.0f} messages/s, "
                f"{publish['message_bytes']:,.0f} bytes each in Redis)."
                if publish
                else " Sending to a broker was not measured (no Redis reachable)."
            ),
        )
    )
    latencies = sorted({0.0, model["latency"], EXTRA_LATENCY})
    rows = [
        [
            _ms(lat),
            _rate(process_rate(model, lat)),
            _rate(child_rate(model, lat)),
            "measured" if lat in (0.0, model["latency"]) else "formula",
        ]
        for lat in latencies
    ]
    out.append(
        (
            "Renewals per second of one worker",
            [
                "Slice latency",
                f"process, {model['threads']} threads",
                "prefork child (1 at a time)",
                "source",
            ],
            rows,
            f"Measured: {m['threads']} threads renewing due links on PostgreSQL, local token "
            f"server answering at once ({_rate(m['rate_0'])}/s = R_0) and after "
            f"{_ms(m['latency'])} ({_rate(m['rate_latency'])}/s); one renewal at a time "
            f"{m['t1'] * 1000:.2f} ms (t1). A renewal holds its thread for the latency plus "
            f"s = T / R_L - L = {model['own'] * 1000:.1f} ms of its own; a process renews "
            "min(R_0, T / (latency + s)) a second, a prefork child 1 / (latency + t1).",
        )
    )
    sized = users(sizing)  # computed again: the formulas of this revision
    threads = model["threads"]
    at = " / ".join(_ms(lat) for lat in sized[0]["latencies"])

    def per_latency(values: list[Any], fmt: str = "{}") -> str:
        return " / ".join(fmt.format(value) for value in values)

    quantities: list[tuple[str, Any]] = [
        ("renewals/s, average", lambda u: _rate(u["average"])),
        ("links due per hourly run", lambda u: f"{u['per_run']:,.0f}"),
        ("default rate and spread keep up", lambda u: "yes" if u["default_ok"] else "no"),
        ("RENEW_RATE_LIMIT to set (= peak renewals/s)", lambda u: f"{u['rate_limit']:g}"),
        ("dispatch window after each run", lambda u: _duration(u["window"])),
        ("a day's backlog cleared in", lambda u: f"{u['catch_up_hours']:.0f} h"),
        ("+ API renewals/s per 1 % of users active", lambda u: _rate(u["api_per_percent"])),
        (
            f"worker processes ({model['threads']} threads), Slice {at}",
            lambda u: per_latency(u["processes"]),
        ),
        (f"or prefork children, Slice {at}", lambda u: per_latency(u["children"])),
        (
            f"open DB connections ({threads} per process), Slice {at}",
            lambda u: per_latency([threads * p for p in u["processes"]]),
        ),
        (
            f"busy DB connections at the peak, Slice {at}",
            lambda u: per_latency(u["busy_connections"], "{:.1f}"),
        ),
        ("sweep time per run, sending excluded", lambda u: _duration(u["sweep_seconds"])),
        (
            "sweep time per run, sending to Redis",
            lambda u: (
                _duration(u["sweep_sending_seconds"])
                if u["sweep_sending_seconds"] is not None
                else "not measured"
            ),
        ),
        ("sweep peak RSS", lambda u: _mib(u["sweep_peak_kib"])),
    ]
    rows = [[label, *(cell(u) for u in sized)] for label, cell in quantities]
    out.append(
        (
            "Sizing for 10,000, 1,000,000 and 10,000,000 linked users",
            ["linked users", *(f"{u['n']:,}" for u in sized)],
            rows,
            f"Average = links / RENEW_WITHIN ({policy['renew_within'] / DAY:g} days: a "
            "link whose refresh token rotates is due that long after its last renewal, and "
            "is renewed once per that time plus the wait for a run, at most). Due per "
            f"run = links x {policy['beat_interval']:g} s / RENEW_WITHIN. Defaults keep up "
            f"when RENEW_RATE_LIMIT x RENEW_SPREAD ({policy['rate_limit']:g}/s x "
            f"{policy['spread']:g} s) covers a run. RENEW_RATE_LIMIT = the larger of the "
            f"default and {HEADROOM:g} x due per run / RENEW_SPREAD, rounded up: renewals "
            "arrive at that rate (the peak) for the dispatch window (due per run / rate) "
            "after each run. A day's backlog: a day of due links on top of the normal run, "
            "cleared at the spare capacity per run. API renewals: an upper bound for each "
            "1 % of the links whose user calls the API within an hour (one renewal per "
            f"{policy['access_lifetime'] - policy['leeway']:g} s, access-token lifetime "
            "minus ACCESS_TOKEN_LEEWAY); they replace that user's beat renewals. "
            "Processes and children: the peak divided by one worker's rate (previous table), "
            "rounded up. Busy connections: peak x (latency + s) (Little's law). Sweep time: "
            "the links a run dispatches at the measured dispatch rate, plus, sending, at "
            "the measured publish rate (first table).",
        )
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
