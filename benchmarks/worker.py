"""The benchmark steps. ``benchmarks/run.py`` runs each in a fresh process::

    python -m benchmarks.worker STEP [--n N] [--concurrency C] ...

Each step prints its result as one JSON object on the last line of stdout and exits 0, or
exits non-zero when something it checks is wrong (a failed renewal, a missing dispatch, an
unexpected status...). Nothing here asserts on timing.

The database and token server come from ``SLICE_BENCH_DB`` and ``SLICE_BENCH_SERVER`` (see
``benchmarks/settings.py``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")


class BenchmarkError(Exception):
    """Something the benchmark checks is wrong (never a timing)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkError(message)


def peak_rss_kib() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def setup() -> None:
    import django

    django.setup()


def vendor() -> str:
    from django.db import connection

    return connection.vendor


def token_requests_served() -> int:
    import requests
    from django.conf import settings

    return int(requests.get(f"{settings.SERVER}/stats", timeout=10).json()["token_requests"])


# -- threads ---------------------------------------------------------------------------


def run_threads(
    items: Iterable[Any],
    work: Callable[[Any], Any],
    concurrency: int,
    *,
    on_exit: Callable[[], None] | None = None,
) -> tuple[float, collections.Counter[str], collections.Counter[str]]:
    """Feed ``items`` to ``work`` from ``concurrency`` threads; (seconds, outcomes, errors)."""
    iterator = iter(items)
    lock = threading.Lock()
    outcomes: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    start = threading.Barrier(concurrency + 1)

    def loop() -> None:
        local: collections.Counter[str] = collections.Counter()
        failed: collections.Counter[str] = collections.Counter()
        start.wait()
        try:
            while True:
                with lock:
                    item = next(iterator, _END)
                if item is _END:
                    break
                try:
                    local[str(work(item))] += 1
                except Exception as exc:
                    failed[f"{type(exc).__name__}: {exc}"[:200]] += 1
        finally:
            if on_exit is not None:
                on_exit()
            with lock:
                outcomes.update(local)
                errors.update(failed)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, outcomes, errors


_END = object()


# -- steps -----------------------------------------------------------------------------


def step_migrate(args: argparse.Namespace) -> dict[str, Any]:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return {"ok": True}


def _truncate() -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from slice_connect.models import SliceCredential

    tables = [SliceCredential._meta.db_table, get_user_model()._meta.db_table]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)}, django_session RESTART IDENTITY CASCADE")
        else:
            for table in [*tables, "django_session"]:
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (our own table names)


def step_seed(args: argparse.Namespace) -> dict[str, Any]:
    """Replace all users and credentials with ``n`` users, each with a due credential.

    Refresh deadlines are distinct and spread over the renewal window (as real link times
    would be), access tokens are expired; every token is encrypted by bulk_create itself.
    """
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from slice_connect.conf import app_settings
    from slice_connect.models import SliceCredential

    n = args.n
    began = time.perf_counter()
    _truncate()
    user_model = get_user_model()
    now = timezone.now()
    window = app_settings.RENEW_WITHIN - timedelta(hours=1)
    batch = 5000
    for offset in range(0, n, batch):
        count = min(batch, n - offset)
        with transaction.atomic():
            users = user_model.objects.bulk_create(
                [user_model(username=f"bench{offset + i}", password="!") for i in range(count)]
            )
            SliceCredential.objects.bulk_create(
                [
                    SliceCredential(
                        user_id=user.pk,
                        access_token=secrets.token_urlsafe(32),
                        refresh_token=secrets.token_urlsafe(32),
                        access_token_expires_at=now - timedelta(minutes=5),
                        refresh_token_expires_at=now
                        + timedelta(hours=1)
                        + window * ((offset + i) / max(n, 1)),
                    )
                    for i, user in enumerate(users)
                ]
            )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
        else:
            cursor.execute("ANALYZE")
    due = SliceCredential.objects.due_for_renewal().count()
    check(due == n, f"seeded {n} credentials but {due} are due")
    return {"n": n, "seconds": time.perf_counter() - began}


def _refresh_tokens(n: int) -> list[str]:
    return [secrets.token_urlsafe(32) for _ in range(n)]


def bare_post_function(*, kept_alive: bool = False) -> Callable[[str], str]:
    """Side A's unit of work: the refresh POST as oauth.py sends it, and nothing else.

    The same form body, headers, timeout, no redirects, streamed and read whole,
    JSON-decoded; nothing read from the environment, no deadline, no database, no
    encryption, no validation. By default one ``requests.post`` per call (a new connection
    each time: what one token request costs on its own, the reference of the targets);
    with ``kept_alive``, on a kept-alive session per thread (the HTTP floor: oauth.py keeps
    one per thread too).
    """
    import requests
    from django.conf import settings

    url = settings.SLICE_CONNECT["TOKEN_URL"]
    client_id = settings.SLICE_CONNECT["CLIENT_ID"]
    client_secret = settings.SLICE_CONNECT["CLIENT_SECRET"]
    local = threading.local()

    def sender() -> Any:
        if not kept_alive:
            return requests
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.trust_env = False
        return session

    def post(refresh_token: str) -> str:
        body = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            "client_secret": client_secret,
        }
        with sender().post(
            url,
            data=body,
            headers={"Accept": "application/json"},
            timeout=(3.05, 10.0),
            allow_redirects=False,
            stream=True,
        ) as response:
            content = b"".join(response.iter_content(chunk_size=8192))
        if response.status_code != 200:
            raise BenchmarkError(f"HTTP {response.status_code}")
        json.loads(content)
        return "ok"

    return post


def renew_function() -> Callable[[int], str]:
    """Side B's unit of work: what the Celery task does for one due credential id."""
    from slice_connect import services

    def renew(pk: int) -> str:
        result = services.renew_by_id(pk)
        return "renewed" if result.renewed else "skipped"

    return renew


def _due_ids() -> list[int]:
    from slice_connect.models import SliceCredential

    return list(SliceCredential.objects.due_for_renewal().iter_ids())


def run_bare(count: int, concurrency: int, *, kept_alive: bool = False) -> tuple[float, float]:
    """Time ``count`` side-A POSTs: (wall, this process's CPU) seconds; check each arrived."""
    before = token_requests_served()
    cpu = time.process_time()
    seconds, outcomes, errors = run_threads(
        _refresh_tokens(count), bare_post_function(kept_alive=kept_alive), concurrency
    )
    cpu = time.process_time() - cpu
    posted = token_requests_served() - before
    check(not errors, f"bare POSTs failed: {dict(errors)}")
    check(outcomes["ok"] == count == posted, f"{dict(outcomes)}, server saw {posted} POSTs")
    return seconds, cpu


def run_renew(ids: list[int], concurrency: int) -> tuple[float, float]:
    """Time renewing ``ids`` (side B): (wall, CPU) seconds; check each renewed with one POST."""
    from django.db import connections

    connections.close_all()
    before = token_requests_served()
    cpu = time.process_time()
    seconds, outcomes, errors = run_threads(
        ids, renew_function(), concurrency, on_exit=connections.close_all
    )
    cpu = time.process_time() - cpu
    posted = token_requests_served() - before
    check(not errors, f"renewals failed: {dict(errors)}")
    check(outcomes["renewed"] == len(ids), f"renewed {dict(outcomes)} of {len(ids)}")
    check(posted == len(ids), f"{len(ids)} renewals made {posted} token requests")
    return seconds, cpu


def step_bare(args: argparse.Namespace) -> dict[str, Any]:
    """Side A alone."""
    seconds, _cpu = run_bare(args.n, args.concurrency)
    return {"n": args.n, "seconds": seconds, "per_second": args.n / seconds}


def step_renew(args: argparse.Namespace) -> dict[str, Any]:
    """Side B alone: renew every due credential (there must be ``n``)."""
    ids = _due_ids()
    check(len(ids) == args.n, f"expected {args.n} due credentials, found {len(ids)}")
    seconds, _cpu = run_renew(ids, args.concurrency)
    return {"n": args.n, "seconds": seconds, "per_second": args.n / seconds}


def step_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Sides A, A' (kept alive) and B, interleaved in rounds so that all see the same machine.

    The table holds ``n`` due credentials; the ``count`` most urgent (the sweep's order)
    are renewed, in ``rounds`` chunks, each chunk preceded by as many side-A and side-A'
    POSTs.
    """
    from slice_connect.models import SliceCredential

    count = min(args.count or args.n, args.n)
    ids = _due_ids()
    check(len(ids) == args.n, f"expected {args.n} due credentials, found {len(ids)}")
    ids = ids[:count]
    rounds = max(1, min(args.rounds, count))
    size = -(-count // rounds)
    chunks = [ids[i : i + size] for i in range(0, count, size)]
    seconds = collections.Counter[str]()
    cpu = collections.Counter[str]()
    ratios = []
    for chunk in chunks:
        a, a_cpu = run_bare(len(chunk), args.concurrency)
        kept, kept_cpu = run_bare(len(chunk), args.concurrency, kept_alive=True)
        b, b_cpu = run_renew(chunk, args.concurrency)
        seconds.update({"bare": a, "kept": kept, "renew": b})
        cpu.update({"bare": a_cpu, "kept": kept_cpu, "renew": b_cpu})
        ratios.append(a / b)
    left = SliceCredential.objects.due_for_renewal().count()
    check(left == args.n - count, f"{left} credentials due after renewing {count} of {args.n}")
    return {
        "n": args.n,
        "count": count,
        "concurrency": args.concurrency,
        "rounds": rounds,
        "bare_per_second": count / seconds["bare"],
        "kept_per_second": count / seconds["kept"],
        "renew_per_second": count / seconds["renew"],
        "ratio": seconds["bare"] / seconds["renew"],
        "ratio_kept": seconds["kept"] / seconds["renew"],
        # CPU of this (client) process per operation: the GIL caps it at one core.
        "bare_cpu_ms": cpu["bare"] / count * 1000,
        "kept_cpu_ms": cpu["kept"] / count * 1000,
        "renew_cpu_ms": cpu["renew"] / count * 1000,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


class Breakdown:
    """Per-thread clocks of where renewals spend their wall time (summed over threads)."""

    PARTS = ("wall", "token_request", "db_statements", "db_commit", "cpu")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self.statements = 0
        self.local = threading.local()

    def add(self, part: str, seconds: float) -> None:
        with self.lock:
            self.totals[part] += seconds

    def timed(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - began)

        return wrapper

    def statement(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            with self.lock:
                self.totals["db_statements"] += time.perf_counter() - began
                self.statements += 1


def step_breakdown(args: argparse.Namespace) -> dict[str, Any]:
    """Where a renewal's wall time goes, at ``concurrency`` threads (and a bare POST's).

    Each renewal's wall time is split, from the renewing thread's clocks, into the token
    request (``oauth.refresh``, its HTTP round trip included), the database statements
    (wall time of each, from sending it to its result, BEGIN included) and commits, the
    thread's own CPU time outside those, and the rest: waiting for the interpreter lock
    (the GIL) and for other threads. Renews ``count`` due credentials.
    """
    from django.db import connection
    from django.db.backends.base.base import BaseDatabaseWrapper

    from slice_connect import oauth, services

    ids = _due_ids()[: args.count]
    check(len(ids) == args.count, f"expected {args.count} due credentials, found {len(ids)}")
    clocks = Breakdown()

    def renew(pk: int) -> str:
        cpu = time.thread_time()
        began = time.perf_counter()
        with connection.execute_wrapper(clocks.statement):
            result = services.renew_by_id(pk)
        clocks.add("wall", time.perf_counter() - began)
        clocks.add("cpu", time.thread_time() - cpu)
        return "renewed" if result.renewed else "skipped"

    with (
        mock.patch.object(oauth, "refresh", clocks.timed("token_request", oauth.refresh)),
        mock.patch.object(
            BaseDatabaseWrapper,
            "_commit",
            clocks.timed("db_commit", BaseDatabaseWrapper._commit),
        ),
    ):
        from django.db import connections

        seconds, outcomes, errors = run_threads(
            ids, renew, args.concurrency, on_exit=connections.close_all
        )
    check(not errors, f"renewals failed: {dict(errors)}")
    check(outcomes["renewed"] == len(ids), f"renewed {dict(outcomes)} of {len(ids)}")
    bare = Breakdown()
    post = bare_post_function(kept_alive=True)

    def bare_post(token: str) -> str:
        cpu = time.thread_time()
        began = time.perf_counter()
        outcome = post(token)
        bare.add("wall", time.perf_counter() - began)
        bare.add("cpu", time.thread_time() - cpu)
        return outcome

    bare_seconds, _outcomes, bare_errors = run_threads(
        _refresh_tokens(len(ids)), bare_post, args.concurrency
    )
    check(not bare_errors, f"bare POSTs failed: {dict(bare_errors)}")
    count = len(ids)
    per = {part: value / count * 1000 for part, value in clocks.totals.items()}
    return {
        "count": count,
        "concurrency": args.concurrency,
        "renew_per_second": count / seconds,
        "bare_per_second": count / bare_seconds,
        "statements": clocks.statements / count,
        # Milliseconds per renewal. The token request's own CPU is inside "token_request";
        # "cpu" is the thread's whole CPU time, so "other" is what is left of the wall time
        # after the waits and the CPU spent outside them.
        "ms": per,
        "bare_ms": {part: value / count * 1000 for part, value in bare.totals.items()},
    }


def step_commit_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Median time of one small durable write transaction (what each phase's COMMIT costs)."""
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit (x integer)")
    samples = []
    for _ in range(args.n):
        began = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_commit (x) VALUES (1)")
        samples.append(time.perf_counter() - began)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_commit")
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
            cursor.execute("SHOW synchronous_commit")
            sync = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT sqlite_version()")
            version = cursor.fetchone()[0]
            cursor.execute("PRAGMA journal_mode")
            sync = f"journal_mode={cursor.fetchone()[0]}"
    return {"commit_ms": statistics.median(samples) * 1000, "version": version, "sync": sync}


def _patched_sweep_settings() -> Any:
    from django.conf import settings
    from django.test import override_settings

    # Large enough that one sweep dispatches every due credential.
    return override_settings(
        SLICE_CONNECT={**settings.SLICE_CONNECT, "RENEW_RATE_LIMIT": 1e6, "RENEW_SPREAD": 1e6}
    )


class DispatchCounter:
    """Stands in for ``renew_credential.apply_async``: counts, keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, args: tuple[int, ...], countdown: float = 0, **kwargs: Any) -> None:
        self.count += 1


def step_sweep_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of the beat sweep selecting and dispatching every due credential."""
    from slice_connect import tasks

    baseline = peak_rss_kib()
    counter = DispatchCounter()
    with (
        _patched_sweep_settings(),
        mock.patch.object(tasks.renew_credential, "apply_async", counter),
    ):
        began = time.perf_counter()
        scheduled = tasks.renew_due_credentials()
        seconds = time.perf_counter() - began
    check(scheduled == args.n == counter.count, f"{args.n} due, {counter.count} dispatched")
    return {
        "n": args.n,
        "seconds": seconds,
        "baseline_kib": baseline,
        "peak_kib": peak_rss_kib(),
    }


def _extra_credential(username: str, *, fresh: bool = True) -> Any:
    """A user with a credential that is not due (fresh access token, far refresh deadline)."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from slice_connect.models import SliceCredential

    user_model = get_user_model()
    user_model.objects.filter(username=username).delete()
    user = user_model.objects.create(username=username, password="!")
    now = timezone.now()
    credential = SliceCredential.objects.create(
        user=user,
        access_token=secrets.token_urlsafe(32),
        refresh_token=secrets.token_urlsafe(32),
        access_token_expires_at=now + timedelta(hours=1 if fresh else -1),
        refresh_token_expires_at=now + timedelta(days=14),
    )
    return user, credential


def _statement_kinds(captured: list[dict[str, Any]]) -> list[str]:
    kinds = []
    for query in captured:
        sql = query["sql"].lstrip()
        word = sql.split(None, 1)[0].upper() if sql else "?"
        if word == "SELECT" and "FOR UPDATE" in sql.upper():
            word = "SELECT FOR UPDATE"
        elif word == "SELECT" and "SET_CONFIG" in sql.upper():
            word = "SET lock_timeout"
        kinds.append(word)
    return kinds


def step_queries(args: argparse.Namespace) -> dict[str, Any]:
    """Query counts: renewal, callback, SliceClient call, beat sweep (+ EXPLAIN on PG)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from slice_connect import services, tasks
    from slice_connect.client import SliceClient
    from slice_connect.models import SliceCredential

    result: dict[str, Any] = {"n": args.n}

    # A forced renewal of one credential (POST to the local token server).
    _user, credential = _extra_credential("bench-q-renew")
    with CaptureQueriesContext(connection) as ctx:
        services.renew_by_id(credential.pk, force=True)
    check(SliceCredential.objects.get(pk=credential.pk).version == 2, "renewal did not renew")
    result["renewal"] = len(ctx)
    result["renewal_statements"] = _statement_kinds(ctx.captured_queries)
    # A renewal that finds nothing to do (the Celery task on a credential renewed since).
    with CaptureQueriesContext(connection) as ctx:
        services.renew_by_id(credential.pk)
    result["renewal_not_needed"] = len(ctx)

    # The OAuth callback: log in, start at the authorize view, come back with a code.
    user_model = get_user_model()
    user_model.objects.filter(username="bench-q-callback").delete()
    user = user_model.objects.create(username="bench-q-callback", password="!")
    client = Client()
    client.force_login(user)
    start = client.post("/slice/authorize/")
    check(start.status_code == 302, f"authorize answered {start.status_code}")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/slice/callback/", {"code": "bench-code", "state": state})
    check(response.status_code == 302, f"callback answered {response.status_code}")
    check(SliceCredential.objects.filter(user=user).exists(), "callback linked nothing")
    result["callback"] = len(ctx)
    result["callback_statements"] = _statement_kinds(ctx.captured_queries)

    # SliceClient with a fresh access token: building it from a user, then each call.
    api_user, _credential = _extra_credential("bench-q-client")
    with CaptureQueriesContext(connection) as ctx:
        api = SliceClient(api_user)
    result["client_init"] = len(ctx)
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(10):
            body = api.get("orders")
    check(body.get("ok") is True, f"API answered {body!r}")
    result["client_call"] = len(ctx) / 10
    api.close()

    # Clean up the extras (deleting the credentials revokes at the local server).
    user_model.objects.filter(username__startswith="bench-q-").delete()

    # The beat sweep over every due credential.
    counter = DispatchCounter()
    with ExitStack() as stack:
        stack.enter_context(_patched_sweep_settings())
        stack.enter_context(mock.patch.object(tasks.renew_credential, "apply_async", counter))
        ctx = stack.enter_context(CaptureQueriesContext(connection))
        began = time.perf_counter()
        scheduled = tasks.renew_due_credentials()
        seconds = time.perf_counter() - began
    check(scheduled == args.n == counter.count, f"{args.n} due, {counter.count} dispatched")
    result["sweep"] = len(ctx.captured_queries)
    result["sweep_seconds"] = seconds
    # The pages of the due ids on their own (the sweep may run other queries around them).
    with CaptureQueriesContext(connection) as ctx:
        count = sum(1 for _ in SliceCredential.objects.due_for_renewal().iter_ids())
    check(count == args.n, f"{args.n} due, iter_ids yielded {count}")
    captured = ctx.captured_queries
    # The first, middle and last full page, re-run (best of 5): a page that rescanned the
    # rows before the cursor would get slower towards the end.
    full = captured[:-1] or captured
    result["sweep_page_ms"] = [
        _best_time_ms(full[i]["sql"]) for i in (0, len(full) // 2, len(full) - 1)
    ]
    middle = full[len(full) // 2]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {middle['sql']}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            # On a tiny table a sequential scan is the right plan; past that, the index.
            if args.n >= 5000:
                check("slice_cred_renewal_due" in plan, "the sweep does not use its index")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {middle['sql']}")
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
    result["explain"] = plan
    result["explain_sql"] = middle["sql"]
    return result


def _best_time_ms(sql: str, repeat: int = 5) -> float:
    """Best of ``repeat`` runs of ``sql``, in ms: the server's execution time on PostgreSQL
    (EXPLAIN ANALYZE; on the client, converting 500 timestamps costs more than the query),
    wall time in-process on SQLite."""
    from django.db import connection

    best = float("inf")
    with connection.cursor() as cursor:
        for _ in range(repeat):
            if connection.vendor == "postgresql":
                cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
                plan = cursor.fetchone()[0]
                if isinstance(plan, str):
                    plan = json.loads(plan)
                best = min(best, plan[0]["Execution Time"] / 1000)
            else:
                began = time.perf_counter()
                cursor.execute(sql)
                cursor.fetchall()
                best = min(best, time.perf_counter() - began)
    return best * 1000


def _overhead(username: str, client_times: list[float], bare_times: list[float]) -> dict[str, Any]:
    """A client-vs-bare comparison's result; removes the step's extra user."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(username=username).delete()
    client_median = statistics.median(client_times)
    bare_median = statistics.median(bare_times)
    return {
        "calls": len(client_times),
        "client_median_us": client_median * 1e6,
        "bare_median_us": bare_median * 1e6,
        "ratio": client_median / bare_median,
    }


def step_client(args: argparse.Namespace) -> dict[str, Any]:
    """SliceClient.get vs a bare requests.Session with the same header: median latency."""
    import requests
    from django.conf import settings

    from slice_connect.client import SliceClient
    from slice_connect.conf import app_settings

    _user, credential = _extra_credential("bench-client")
    url = f"{settings.SLICE_CONNECT['API_BASE_URL']}orders"
    client = SliceClient(credential)
    bare = requests.Session()
    bare.trust_env = False  # as SliceClient's session
    headers = {"Authorization": f"Bearer {credential.access_token}", "Accept": "application/json"}
    timeout = app_settings.HTTP_TIMEOUT

    def call_client() -> Any:
        return client.get("orders")

    def call_bare() -> Any:
        response = bare.get(url, headers=headers, timeout=timeout, allow_redirects=False)
        response.raise_for_status()
        return response.json()

    for _ in range(200):
        call_client()
        call_bare()
    client_times: list[float] = []
    bare_times: list[float] = []
    clock = time.perf_counter
    for i in range(args.n):
        # Alternate which goes first, so neither always gets the warmer cache.
        pair = ((call_client, client_times), (call_bare, bare_times))
        for call, times in pair if i % 2 else reversed(pair):
            began = clock()
            body = call()
            times.append(clock() - began)
    check(body.get("ok") is True, f"API answered {body!r}")
    client.close()
    bare.close()
    return _overhead("bench-client", client_times, bare_times)


def step_async_client(args: argparse.Namespace) -> dict[str, Any]:
    """AsyncSliceClient.get vs a bare httpx.AsyncClient with the same header: median latency."""
    import asyncio

    import httpx
    from django.conf import settings

    from slice_connect.client import AsyncSliceClient
    from slice_connect.conf import app_settings

    _user, credential = _extra_credential("bench-async-client")
    url = f"{settings.SLICE_CONNECT['API_BASE_URL']}orders"
    headers = {"Authorization": f"Bearer {credential.access_token}", "Accept": "application/json"}
    connect, read = app_settings.HTTP_TIMEOUT
    timeout = httpx.Timeout(read, connect=connect)

    async def measure() -> tuple[list[float], list[float], Any]:
        async with (
            AsyncSliceClient(credential) as client,
            httpx.AsyncClient(trust_env=False) as bare,
        ):

            async def call_client() -> Any:
                return await client.get("orders")

            async def call_bare() -> Any:
                response = await bare.get(url, headers=headers, timeout=timeout)
                response.raise_for_status()
                return response.json()

            for _ in range(200):
                await call_client()
                await call_bare()
            client_times: list[float] = []
            bare_times: list[float] = []
            clock = time.perf_counter
            body: Any = None
            for i in range(args.n):
                pair = ((call_client, client_times), (call_bare, bare_times))
                for call, times in pair if i % 2 else reversed(pair):
                    began = clock()
                    body = await call()
                    times.append(clock() - began)
            return client_times, bare_times, body

    client_times, bare_times, body = asyncio.run(measure())
    check(body.get("ok") is True, f"API answered {body!r}")
    return _overhead("bench-async-client", client_times, bare_times)


def step_crypto(args: argparse.Namespace) -> dict[str, Any]:
    """Encryption's share of a renewal: instrumented sequential renewals + a micro-benchmark.

    Forced renewals of ``n`` credentials, one at a time, with the token field's Fernet
    decrypt and encrypt timed; then the bare cost of
    decrypting both tokens and re-encrypting them, median of many.
    """
    from slice_connect import fields, services
    from slice_connect.fields import current_fernet
    from slice_connect.models import SliceCredential

    spent = {"decrypt": 0.0, "encrypt": 0.0}
    calls = {"decrypt": 0, "encrypt": 0}
    clock = time.perf_counter

    class TimedFernet:
        """The token field's Fernet, with its decrypt and encrypt timed."""

        def __init__(self, fernet: Any) -> None:
            self.fernet = fernet

        def _timed(self, kind: str, data: bytes) -> bytes:
            began = clock()
            try:
                return getattr(self.fernet, kind)(data)  # type: ignore[no-any-return]
            finally:
                spent[kind] += clock() - began
                calls[kind] += 1

        def decrypt(self, data: bytes) -> bytes:
            return self._timed("decrypt", data)

        def encrypt(self, data: bytes) -> bytes:
            return self._timed("encrypt", data)

    ids = list(SliceCredential.objects.order_by("pk").values_list("pk", flat=True)[: args.n])
    check(len(ids) == args.n, f"need {args.n} credentials, have {len(ids)}")
    for pk in ids[:20]:  # warm-up
        services.renew_by_id(pk, force=True)
    with mock.patch.object(fields, "current_fernet", lambda: TimedFernet(current_fernet())):
        began = clock()
        for pk in ids:
            services.renew_by_id(pk, force=True)
        total = clock() - began
    per_renewal = total / args.n
    crypto = (spent["decrypt"] + spent["encrypt"]) / args.n

    fernet = current_fernet()
    tokens = [secrets.token_urlsafe(32) for _ in range(2)]
    stored = [fernet.encrypt(t.encode()) for t in tokens]
    samples = []
    for _ in range(3000):
        began = clock()
        for value in stored:
            fernet.decrypt(value)
        for token in tokens:
            fernet.encrypt(token.encode())
        samples.append(clock() - began)
    pair = statistics.median(samples)
    return {
        "renewals": args.n,
        "renewal_ms": per_renewal * 1000,
        "decrypts_per_renewal": calls["decrypt"] / args.n,
        "encrypts_per_renewal": calls["encrypt"] / args.n,
        "crypto_us_per_renewal": crypto * 1e6,
        "crypto_share": crypto / per_renewal,
        "pair_us": pair * 1e6,
        "pair_share": pair / per_renewal,
    }


STEPS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "migrate": step_migrate,
    "seed": step_seed,
    "bare": step_bare,
    "renew": step_renew,
    "throughput": step_throughput,
    "commit-latency": step_commit_latency,
    "sweep-memory": step_sweep_memory,
    "queries": step_queries,
    "client": step_client,
    "async-client": step_async_client,
    "crypto": step_crypto,
    "breakdown": step_breakdown,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark step.")
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--count", type=int, default=0, help="throughput: renewals timed")
    parser.add_argument("--rounds", type=int, default=4, help="throughput: A/B alternations")
    return run_step(STEPS, parser.parse_args(argv))


def run_step(steps: dict[str, Callable[[argparse.Namespace], dict[str, Any]]], args: Any) -> int:
    """Set Django up, run step ``args.step`` and print its result as JSON on one line.

    Returns 0, or 1 when a check inside the step failed (said on stderr).
    """
    setup()
    try:
        result = steps[args.step](args)
    except BenchmarkError as exc:
        print(f"benchmark check failed in {args.step}: {exc}", file=sys.stderr)
        return 1
    result["vendor"] = vendor()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
