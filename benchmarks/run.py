"""Measure and publish what slice_connect costs. See benchmarks/README.md.

    python -m benchmarks [--quick] [--write]        (or: python benchmarks/run.py ...)

Starts its own local token server(s), creates (and at the end drops) its own PostgreSQL
database and SQLite file, runs every step in a fresh worker process
(``benchmarks/worker.py``) and prints the figures. ``--write`` also writes
``benchmarks/results.md`` and ``benchmarks/results.rst`` (the tables for README.rst).

Exits non-zero when a step fails or a check inside it fails (a renewal that did not
renew, a credential not dispatched, a query plan without the index...), never because of
a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_slice_connect"


class Failure(Exception):
    """A step failed: the run exits non-zero."""


@dataclass
class Plan:
    sizes: list[int]
    pg_cap: int  # renewals timed per size on PostgreSQL (the most urgent ones)
    sqlite_sizes: list[int]
    sqlite_cap: int
    memory_sizes: list[int]
    rounds: int
    diag_rows: int
    diag_count: int
    latency_ms: float
    client_calls: int
    crypto_renewals: int
    commit_samples: int
    sizing_sizes: list[int]  # links in the sizing sweep's table (benchmarks/sizing.py)
    publish_count: int  # messages sent to Redis to time apply_async (sizing)
    seq_latency_count: int = 400  # renewals one at a time against the slow token server
    batch_size: int = 500  # RENEW_BATCH_SIZE (the quick run pages through small batches)


FULL = Plan(
    sizes=[1_000, 10_000, 100_000],
    pg_cap=5_000,
    sqlite_sizes=[1_000, 10_000, 100_000],
    sqlite_cap=1_000,
    memory_sizes=[10_000, 100_000],
    rounds=4,
    diag_rows=10_000,
    diag_count=3_000,
    latency_ms=50.0,
    client_calls=3_000,
    crypto_renewals=1_000,
    commit_samples=200,
    sizing_sizes=[1_000_000],
    publish_count=20_000,
)
QUICK = Plan(
    sizes=[100, 300],
    pg_cap=100,
    sqlite_sizes=[300],
    sqlite_cap=50,
    memory_sizes=[100, 300],
    rounds=2,
    diag_rows=150,
    diag_count=40,
    latency_ms=20.0,
    client_calls=300,
    crypto_renewals=30,
    commit_samples=20,
    sizing_sizes=[2_000],
    publish_count=200,
    seq_latency_count=20,
    batch_size=40,
)

PLAN = FULL  # the plan of this run (main() sets it)


@dataclass
class Results:
    info: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    breakdown: dict[str, Any] = field(default_factory=dict)
    queries: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    memory: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    async_client: dict[str, Any] = field(default_factory=dict)
    crypto: dict[str, Any] = field(default_factory=dict)
    commit: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizing: dict[str, Any] = field(default_factory=dict)
    sizing_only: bool = False


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------


def worker(
    step: str, env: dict[str, str], *, module: str = "benchmarks.worker", **options: Any
) -> dict[str, Any]:
    """Run one worker step (of ``module``) in a fresh process and return its JSON result."""
    command = [PYTHON, "-m", module, step]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    began = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)  # noqa: S603
    if proc.returncode != 0:
        raise Failure(f"step {step} {options} failed (exit {proc.returncode}):\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise Failure(f"step {step} printed no result:\n{proc.stdout}\n{proc.stderr}") from None
    log(f"{step} {options or ''} done in {time.monotonic() - began:.1f}s")
    return result


@contextmanager
def token_server(latency_ms: float = 0.0) -> Iterator[str]:
    """Start benchmarks/token_server.py in its own process; yield its base URL."""
    proc = subprocess.Popen(  # noqa: S603
        [PYTHON, "-m", "benchmarks.token_server", "--port", "0", "--latency-ms", str(latency_ms)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise Failure(f"token server did not start: {line!r}")
        yield f"http://127.0.0.1:{line[1]}"
    finally:
        if proc.stdin:
            proc.stdin.close()  # it exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def served(server: str) -> int:
    """Token requests the local token server has answered so far."""
    import requests

    return int(requests.get(f"{server}/stats", timeout=10).json()["token_requests"])


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Measured:
    stdout: str
    seconds: float
    peak_kib: int
    samples: list[tuple[int, int]]  # (token requests so far, RSS KiB)


def run_command_measured(
    env: dict[str, str], argv: list[str], server: str, max_posts: int
) -> Measured:
    """Run ``manage.py``-style ``argv`` in a fresh process, watching it.

    Peak RSS comes from ``wait4``; RSS is also sampled every half second against the token
    requests served so far. A command that sends more than ``max_posts`` token requests
    is stopped and fails the run (it would renew for ever).
    """
    env = dict(env, DJANGO_SETTINGS_MODULE="benchmarks.settings")
    before = served(server)
    samples: list[tuple[int, int]] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        began = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603
            [PYTHON, "-m", "django", *argv], cwd=ROOT, env=env, stdout=out, stderr=err
        )
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                posts = served(server) - before
                samples.append((posts, rss_kib(proc.pid)))
                if posts > max_posts:
                    raise Failure(
                        f"{' '.join(argv)} sent {posts} token requests for {max_posts} "
                        "credentials: it renews some more than once"
                    )
                time.sleep(0.5)
        except BaseException:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise
        seconds = time.monotonic() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise Failure(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    posts = served(server) - before
    if posts != max_posts:
        raise Failure(f"{' '.join(argv)} sent {posts} token requests, expected {max_posts}")
    return Measured(stdout, seconds, usage.ru_maxrss, samples)


# -- PostgreSQL administration -----------------------------------------------------------


def pg_admin(url: str, *statements: str) -> None:
    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def pg_name(url: str) -> str:
    name = urlsplit(url).path.lstrip("/") or "bench_slice_connect"
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"Refusing database name {name!r}.")
    return name


# -- the run ---------------------------------------------------------------------------


def base_env(db: str, server: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SLICE_BENCH_BATCH_SIZE"] = str(PLAN.batch_size)
    env["SLICE_BENCH_DB"] = db
    env["SLICE_BENCH_SERVER"] = server
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def throughput(
    results: Results,
    env: dict[str, str],
    label: str,
    n: int,
    count: int,
    plan: Plan,
    args: Any,
    rows: int | None = None,
    concurrency: int | None = None,
) -> None:
    row = worker(
        "throughput",
        env,
        n=n,
        count=count,
        concurrency=concurrency or args.concurrency,
        rounds=plan.rounds,
    )
    row["label"] = label
    row["rows"] = rows or n
    results.throughput.append(row)
    log(
        f"  {label} N={n} x{row['concurrency']}: A {row['bare_per_second']:.0f}/s,"
        f" A' {row['kept_per_second']:.0f}/s, B {row['renew_per_second']:.0f}/s,"
        f" B/A {row['ratio']:.2f}, B/A' {row['ratio_kept']:.2f}"
    )


def command_memory(results: Results, env: dict[str, str], n: int, server: str) -> None:
    run = run_command_measured(
        env, ["slice_connect_renew", "--all", "--progress-every", "1000000000"], server, n
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    expected = f"renewed: {n}, failed: 0, skipped: 0"
    if summary != expected:
        raise Failure(f"slice_connect_renew --all over {n}: {summary!r}, expected {expected!r}")
    early = next((rss for posts, rss in run.samples if posts >= n // 10 and rss), 0)
    results.memory.setdefault("command", {})[n] = {
        "peak_kib": run.peak_kib,
        "rss_at_10pct_kib": early,
        "seconds": run.seconds,
        "per_second": n / run.seconds,
    }
    # The same command with nothing to do (everything was just renewed): its fixed cost.
    idle = run_command_measured(env, ["slice_connect_renew", "--due"], server, 0)
    if not idle.stdout.strip().endswith("renewed: 0, failed: 0, skipped: 0"):
        raise Failure(f"slice_connect_renew --due after --all: {idle.stdout[-300:]!r}")
    results.memory.setdefault("command_idle", {})[n] = {"peak_kib": idle.peak_kib}
    log(
        f"  slice_connect_renew --all N={n}: peak {run.peak_kib / 1024:.1f} MiB, "
        f"{n / run.seconds:.0f}/s"
    )


SIZING = "benchmarks.sizing"


def redis_reachable(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=3).ping())
    except Exception:  # any failure means: not measured
        return False


def run_sizing(results: Results, plan: Plan, env: dict[str, str], broker: str) -> None:
    """The beat sweep over a large table, then the sizing arithmetic (benchmarks/sizing.py).

    For each size: every link due and one run dispatching them all (the worst case), then
    the steady state's share of due links and a run with the default settings.
    """
    from benchmarks import sizing

    policy = worker("policy", env, module=SIZING)
    sweeps: dict[int, dict[str, Any]] = {}
    for n in plan.sizing_sizes:
        sweeps[n] = {}
        for mode, due in (("all", n), ("default", sizing.steady_due(n, policy))):
            log(f"PostgreSQL, sizing sweep, N={n}, {due} due ({mode})")
            seed = worker("seed-bulk", env, module=SIZING, n=n, due=due)
            sweep = worker("sweep", env, module=SIZING, due=due, mode=mode)
            sweeps[n][f"seed_{mode}"] = seed
            sweeps[n][mode] = sweep
            log(
                f"  table set up in {seed['seconds']:.0f}s; sweep {sweep['seconds']:.2f}s, "
                f"{sweep['per_second']:.0f} dispatches/s, peak {mib(sweep['peak_kib'])}"
            )
    publish = None
    if redis_reachable(broker):
        publish = worker("publish", env, module=SIZING, n=plan.publish_count, broker=broker)
    else:
        log(f"Redis not reachable at {broker}: the sweep's sending time is not measured")
    try:
        results.sizing = sizing.sizing_results(
            policy, results.throughput, results.crypto, sweeps, publish
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None


def sizing_only(results: Results, plan: Plan, args: Any, env: dict[str, str], slow: str) -> None:
    """``--sizing-only``: the renewal rates the sizing needs, then :func:`run_sizing`."""
    url = args.database_url
    worker("seed", env, n=plan.diag_rows)
    throughput(results, env, "PostgreSQL", plan.diag_rows, plan.diag_count, plan, args)
    worker("seed", env, n=plan.diag_rows)
    throughput(
        results,
        base_env(url, slow),
        f"PostgreSQL, token server +{plan.latency_ms:g} ms",
        plan.diag_rows,
        plan.diag_count,
        plan,
        args,
    )
    results.crypto = worker("crypto", env, n=plan.crypto_renewals)
    run_sizing(results, plan, env, args.broker_url)


def run_postgres(results: Results, plan: Plan, args: Any, server: str, slow: str) -> None:
    url = args.database_url
    name = pg_name(url)
    pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    env = base_env(url, server)
    try:
        worker("migrate", env)
        results.commit["postgresql"] = worker("commit-latency", env, n=plan.commit_samples)
        if args.sizing_only:
            sizing_only(results, plan, args, env, slow)
            return
        for n in plan.sizes:
            log(f"PostgreSQL, N={n}")
            worker("seed", env, n=n)
            results.queries.setdefault("postgresql", {})[n] = worker("queries", env, n=n)
            if n in plan.memory_sizes:
                results.memory.setdefault("sweep", {})[n] = worker("sweep-memory", env, n=n)
            throughput(results, env, "PostgreSQL", n, min(n, plan.pg_cap), plan, args)
        # One thread: the renewal's own latency, nothing to overlap with.
        log(f"PostgreSQL sequential, N={plan.diag_rows}")
        worker("seed", env, n=plan.diag_rows)
        throughput(
            results,
            env,
            "PostgreSQL, sequential",
            plan.diag_rows,
            plan.diag_count,
            plan,
            args,
            concurrency=1,
        )
        # What bounds B/A: without waiting for WAL flushes, and with a real network delay.
        log(f"PostgreSQL diagnostics, N={plan.diag_rows}")
        worker("seed", env, n=plan.diag_rows)
        pg_admin(url, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        try:
            throughput(
                results,
                env,
                "PostgreSQL, synchronous_commit=off",
                plan.diag_rows,
                plan.diag_count,
                plan,
                args,
            )
        finally:
            pg_admin(url, f'ALTER DATABASE "{name}" RESET synchronous_commit')
        throughput(
            results,
            base_env(url, slow),
            f"PostgreSQL, token server +{plan.latency_ms:g} ms",
            plan.diag_rows - plan.diag_count,
            plan.diag_count,
            plan,
            args,
            rows=plan.diag_rows,
        )
        # The same latency one renewal at a time: a prefork Celery child (no GIL shared).
        worker("seed", env, n=plan.diag_rows)
        throughput(
            results,
            base_env(url, slow),
            f"PostgreSQL, token server +{plan.latency_ms:g} ms, sequential",
            plan.diag_rows,
            plan.seq_latency_count,
            plan,
            args,
            concurrency=1,
        )
        # Where a renewal's time goes with the token server 50 ms away (see breakdown).
        worker("seed", env, n=plan.diag_rows)
        results.breakdown = worker(
            "breakdown", base_env(url, slow), count=plan.diag_count, concurrency=args.concurrency
        )
        log("SliceClient overhead and encryption cost")
        results.client = worker("client", env, n=plan.client_calls)
        results.async_client = worker("async-client", env, n=plan.client_calls)
        results.crypto = worker("crypto", env, n=plan.crypto_renewals)
        if not args.no_sqlite:
            run_sqlite(results, plan, args, server)
        # Last, because 100,000 sequential renewals take the longest by far.
        for n in plan.memory_sizes:
            log(f"PostgreSQL, slice_connect_renew --all, N={n}")
            worker("seed", env, n=n)
            # Memory does not depend on fsync; skipping the WAL flush wait keeps 100,000
            # sequential renewals to minutes.
            pg_admin(url, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            try:
                command_memory(results, env, n, server)
            finally:
                pg_admin(url, f'ALTER DATABASE "{name}" RESET synchronous_commit')
        if plan.sizing_sizes:
            run_sizing(results, plan, env, args.broker_url)
    finally:
        if not args.keep:
            pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_sqlite(results: Results, plan: Plan, args: Any, server: str) -> None:
    with tempfile.TemporaryDirectory(prefix="slice-bench-") as folder:
        env = base_env(f"sqlite:///{folder}/bench.sqlite3", server)
        worker("migrate", env)
        results.commit["sqlite"] = worker("commit-latency", env, n=plan.commit_samples)
        for n in plan.sqlite_sizes:
            log(f"SQLite, N={n}")
            worker("seed", env, n=n)
            results.queries.setdefault("sqlite", {})[n] = worker("queries", env, n=n)
            throughput(results, env, "SQLite", n, min(n, plan.sqlite_cap), plan, args)
        n = plan.sqlite_sizes[0]
        worker("seed", env, n=n)
        throughput(
            results,
            env,
            "SQLite, sequential",
            n,
            min(n, plan.sqlite_cap),
            plan,
            args,
            concurrency=1,
        )


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{rev}{' (with uncommitted changes)' if dirty else ''}" if rev else "?"


def machine_info(argv: list[str]) -> dict[str, Any]:
    import django

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "django": django.get_version(),
        "sqlite": sqlite3.sqlite_version,
        "revision": git_revision(),
        "load_before": os.getloadavg(),
    }


# -- rendering -------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rst_table(headers: list[str], rows: list[list[str]]) -> str:
    headers = [rst_text(h) for h in headers]
    rows = [[rst_text(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(char: str) -> str:
        return "+" + "+".join(char * (w + 2) for w in widths) + "+"

    def cells(row: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + " |"

    out = [line("-"), cells(headers), line("=")]
    for row in rows:
        out += [cells(row), line("-")]
    return "\n".join(out)


def rst_text(text: str) -> str:
    """Markdown-style `code` to reST ``code``."""
    return str(text).replace("``", "`").replace("`", "``")


def n_fmt(n: int) -> str:
    return f"{n:,}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _overhead_table(title: str, ours: str, bare: str, r: dict[str, Any], note: str) -> Any:
    """One client-vs-bare table: the two medians and their ratio."""
    row = [f"{r['client_median_us']:.0f} µs", f"{r['bare_median_us']:.0f} µs", f"{r['ratio']:.3f}"]
    return (title, [f"{ours} median", f"{bare} median", "ratio"], [row], note)


def tables(results: Results, plan: Plan) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, note) for each figure table."""
    out = []
    rows = [
        [
            r["label"],
            str(r["concurrency"]),
            n_fmt(r["rows"]),
            n_fmt(r["count"]),
            f"{r['bare_per_second']:.0f}",
            f"{r['kept_per_second']:.0f}",
            f"{r['renew_per_second']:.0f}",
            f"{r['ratio']:.2f}",
            f"{r['ratio_kept']:.2f}",
            f"{r['bare_cpu_ms']:.2f} / {r['kept_cpu_ms']:.2f} / {r['renew_cpu_ms']:.2f}",
            f"{r['renew_cpu_ms'] / r['bare_cpu_ms']:.1f}x",
        ]
        for r in results.throughput
    ]
    out.append(
        (
            "Renewal throughput vs the HTTP limit",
            [
                "Database",
                "threads",
                "N (rows)",
                "renewed",
                "A: bare POST/s",
                "A': kept-alive POST/s",
                "B: renew/s",
                "B/A",
                "B/A'",
                "client CPU ms/op A / A' / B",
                "CPU B/A",
            ],
            rows,
            "A = one `requests.post` per refresh (a new connection each time: what one token "
            "request costs on its own; no DB, no encryption), A' = the same POST on a "
            "kept-alive session per thread (the HTTP floor; oauth.py keeps one per thread "
            "too), B = `services.renew_with_result` of due credentials (the Celery task's "
            "call), the most urgent `renewed` of the N due rows; A, A' and B alternate in "
            f"{plan.rounds} rounds. Client CPU = CPU time of the benchmark process per "
            "operation (its threads share one GIL, so about one core at most). Durable "
            "commit (median): "
            + ", ".join(
                f"{db} {c['commit_ms']:.1f} ms ({c['sync']})" for db, c in results.commit.items()
            )
            + ".",
        )
    )
    if results.breakdown:
        b = results.breakdown
        ms, bare = b["ms"], b["bare_ms"]
        waits = ms["token_request"] + ms["db_statements"] + ms["db_commit"]
        out.append(
            (
                f"Where a renewal's time goes (token server +{plan.latency_ms:g} ms)",
                [
                    "per operation, ms",
                    "wall",
                    "token request",
                    "DB statements",
                    "DB commits",
                    "thread CPU",
                    "statements",
                ],
                [
                    [
                        f"renewal ({b['renew_per_second']:.0f}/s)",
                        f"{ms['wall']:.2f}",
                        f"{ms['token_request']:.2f}",
                        f"{ms['db_statements']:.2f}",
                        f"{ms['db_commit']:.2f}",
                        f"{ms['cpu']:.2f}",
                        f"{b['statements']:.0f}",
                    ],
                    [
                        f"kept-alive POST ({b['bare_per_second']:.0f}/s)",
                        f"{bare['wall']:.2f}",
                        "",
                        "",
                        "",
                        f"{bare['cpu']:.2f}",
                        "",
                    ],
                ],
                f"{b['concurrency']} threads, {n_fmt(b['count'])} renewals; each from the "
                "renewing thread's own clocks: the token request (its round trip included), "
                "the wall time of each SQL statement (BEGIN included) and of each COMMIT, and "
                "the thread's CPU time. Wall time left after the waits: "
                f"{ms['wall'] - waits:.2f} ms, of which the thread's CPU outside the token "
                "request is part; the rest is waiting for the interpreter lock (GIL) behind "
                "the other threads.",
            )
        )
    memory = results.memory
    sizes = sorted(memory.get("sweep", {}))
    mem_rows = []
    if memory.get("sweep"):
        mem_rows += [
            ["beat sweep, peak RSS"] + [mib(memory["sweep"][n]["peak_kib"]) for n in sizes],
            ["beat sweep, growth over the process before the sweep"]
            + [
                mib(memory["sweep"][n]["peak_kib"] - memory["sweep"][n]["baseline_kib"])
                for n in sizes
            ],
        ]
    if memory.get("command"):
        mem_rows += [
            ["`slice_connect_renew --all`, peak RSS"]
            + [mib(memory["command"][n]["peak_kib"]) for n in sizes],
            ["same run, RSS after 10 % of the renewals"]
            + [mib(memory["command"][n]["rss_at_10pct_kib"]) for n in sizes],
            ["same command with nothing to renew (`--due`)"]
            + [mib(memory["command_idle"][n]["peak_kib"]) for n in sizes],
        ]
    out.append(
        (
            "Peak RSS (fresh process per run, PostgreSQL)",
            ["Process", *[f"N = {n_fmt(n)}" for n in sizes]],
            mem_rows,
            "The sweep dispatched every due credential (`apply_async` replaced by a counter); "
            "the command renewed every credential against the local token server, at "
            + ", ".join(
                f"{r['per_second']:.0f}/s (N = {n_fmt(n)})"
                for n, r in sorted(memory.get("command", {}).items())
            )
            + ", with synchronous_commit=off for that run only (memory does not depend on "
            "fsync; it keeps 100,000 sequential renewals to minutes).",
        )
    )
    q_rows = []
    labels = [
        ("renewal", "renewal (forced, one POST)"),
        ("renewal_not_needed", "renewal not needed (task after a sibling renewed)"),
        ("callback", "OAuth callback (new link)"),
        ("client_init", "SliceClient(user)"),
        ("client_call", "SliceClient.get, fresh token"),
        ("sweep", f"beat sweep, total ({plan.batch_size} ids per query)"),
    ]
    columns: list[tuple[str, int]] = [
        (db, n) for db in ("postgresql", "sqlite") for n in sorted(results.queries.get(db, {}))
    ]
    for key, label in labels:
        q_rows.append([label] + [f"{results.queries[db][n][key]:g}" for db, n in columns])
    q_rows.append(
        ["sweep page, query ms: first / middle / last"]
        + [
            " / ".join(f"{t:.2f}" for t in results.queries[db][n]["sweep_page_ms"])
            for db, n in columns
        ]
    )
    short = {"postgresql": "PG", "sqlite": "SQLite"}
    out.append(
        (
            "Queries",
            ["Operation", *[f"{short[db]} N={n_fmt(n)}" for db, n in columns]],
            q_rows,
            f"The sweep pages through the due ids {plan.batch_size} at a time "
            "(RENEW_BATCH_SIZE), plus one pass for links already expired: its query count "
            "grows by one per page by design. Each page is an index range scan starting at "
            "the keyset cursor, so a page's cost is flat in N and in its position (query "
            "times: PostgreSQL's execution time, SQLite's in-process wall time).",
        )
    )
    c = results.client
    if c:
        out.append(
            _overhead_table(
                "API call overhead",
                "SliceClient.get",
                "bare requests.Session",
                c,
                f"{c['calls']:,} interleaved calls each, keep-alive, same headers, timeout and "
                "trust_env=False, JSON decoded on both sides.",
            )
        )
    a = results.async_client
    if a:
        out.append(
            _overhead_table(
                "Async API call overhead",
                "AsyncSliceClient.get",
                "bare httpx.AsyncClient",
                a,
                f"{a['calls']:,} interleaved awaited calls each on one event loop, keep-alive, "
                "same headers and timeout, trust_env=False, JSON decoded on both sides.",
            )
        )
    k = results.crypto
    if k:
        out.append(
            (
                "Encryption cost per renewal",
                ["renewal (sequential)", "decrypts / encrypts", "Fernet time", "share"],
                [
                    [
                        f"{k['renewal_ms']:.2f} ms",
                        f"{k['decrypts_per_renewal']:g} / {k['encrypts_per_renewal']:g}",
                        f"{k['crypto_us_per_renewal']:.0f} µs",
                        f"{k['crypto_share'] * 100:.1f} %",
                    ]
                ],
                f"{k['renewals']:,} forced renewals one at a time on PostgreSQL (durable commits). "
                f"Decrypting both tokens and re-encrypting them once costs {k['pair_us']:.0f} µs "
                f"({k['pair_share'] * 100:.1f} % of a renewal): the renewal decrypts both "
                "tokens once, in its one locked read (an undecryptable column refuses the "
                "renewal), and encrypts the two new ones.",
            )
        )
    return out


def header_lines(results: Results) -> list[str]:
    i = results.info
    pg = results.commit.get("postgresql", {}).get("version", "not run")
    return [
        f"Date: {i['date']}; revision {i['revision']}",
        f"Command: `{i['command']}`",
        f"Machine: {i['cores']} cores ({i['cpu']}), Python {i['python']}, Django {i['django']}, "
        f"PostgreSQL {pg}, SQLite {i['sqlite']}",
        "Load average before / after: "
        + " / ".join(", ".join(f"{x:.2f}" for x in i[k]) for k in ("load_before", "load_after"))
        + f"; wall time {i['seconds'] / 60:.1f} min",
    ]


def all_tables(results: Results, plan: Plan) -> list[tuple[str, list[str], list[list[str]], str]]:
    """The figure tables, then the sizing tables when the sizing ran."""
    from benchmarks import sizing

    out = tables(results, plan) if results.throughput and not results.sizing_only else []
    return out + (sizing.tables(results.sizing) if results.sizing else [])


def render_sizing(results: Results) -> str:
    """benchmarks/sizing.rst: the sizing tables, included by docs/topics/sizing.rst."""
    from benchmarks import sizing

    parts = [f"- {rst_text(line)}" for line in header_lines(results)]
    parts.append("")
    for title, headers, rows, note in sizing.tables(results.sizing):
        parts += [f"**{title}**", "", rst_table(headers, rows), "", rst_text(note), ""]
    return "\n".join(parts)


README_START = ".. benchmark-tables-start"
README_END = ".. benchmark-tables-end"
#: The tables README.rst quotes (the rest is in docs/performance.rst).
README_TABLES = ("Renewal throughput vs the HTTP limit", "Where a renewal's time goes")


def write_readme_tables(results: Results, plan: Plan) -> None:
    """Replace README.rst's benchmark tables (between the markers) with this run's."""
    readme = ROOT / "README.rst"
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END)
    parts = [README_START, "", *[f"* {rst_text(line)}" for line in header_lines(results)], ""]
    for title, headers, rows, note in tables(results, plan):
        if title.startswith(README_TABLES):
            parts += [f"**{title}**", "", rst_table(headers, rows), "", rst_text(note), ""]
    readme.write_text(text[:start] + "\n".join(parts) + "\n" + text[end:])


def render(results: Results, plan: Plan, style: str) -> str:
    parts = []
    if style == "md":
        parts.append("# slice_connect benchmark results\n")
        parts += [f"- {line}" for line in header_lines(results)]
        parts.append("")
    else:
        parts += [f"- {rst_text(line)}" for line in header_lines(results)]
        parts.append("")
    for title, headers, rows, note in (
        all_tables(results, plan) if style == "md" else tables(results, plan)
    ):
        if style == "md":
            parts += [f"## {title}\n", md_table(headers, rows), "", note, ""]
        else:
            parts += [f"**{title}**", "", rst_table(headers, rows), "", rst_text(note), ""]
    pg = results.queries.get("postgresql")
    if pg:
        n = max(pg)
        if style == "md":
            parts += [
                f"## PostgreSQL plan of a sweep page (N = {n_fmt(n)}, middle page)\n",
                "```sql",
                pg[n]["explain_sql"],
                "```",
                "```",
                pg[n]["explain"],
                "```",
                "",
            ]
        else:
            title = f"PostgreSQL plan of a sweep page (N = {n_fmt(n)}, middle page)"
            parts += [f"**{title}**", "", "::", ""]
            parts += ["    " + line for line in pg[n]["explain"].splitlines()]
            parts.append("")
    return "\n".join(parts)


def console(results: Results, plan: Plan) -> str:
    parts = [*header_lines(results), ""]
    for title, headers, rows, note in all_tables(results, plan):
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
        parts.append(title)
        parts.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)))
        parts.append("  ".join("-" * w for w in widths))
        parts += [
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows
        ]
        parts += [note, ""]
    pg = results.queries.get("postgresql")
    if pg:
        n = max(pg)
        parts += [f"EXPLAIN of a sweep page (N = {n_fmt(n)}):", pg[n]["explain"], ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, seconds (CI smoke run)")
    parser.add_argument("--write", action="store_true", help="write results.md and results.rst")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SLICE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database to create, use and drop (default %(default)s)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--concurrency", type=int, default=8, help="threads (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument(
        "--sizing-sizes",
        type=lambda text: [int(n) for n in text.replace("_", "").split(",") if n],
        help="links in the sizing sweep's table, comma-separated (default 1000000; "
        "--quick: 2000; '' skips the sizing)",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("SLICE_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"),
        help="Redis to time sending renewal messages to (a queue of the run's own, deleted "
        "afterwards; skipped when unreachable; default %(default)s)",
    )
    parser.add_argument(
        "--sizing-only",
        action="store_true",
        help="only what docs/topics/sizing.rst needs (renewal rates, the sweeps); "
        "--write then writes benchmarks/sizing.rst alone",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.sizing_sizes is not None:
        plan = replace(plan, sizing_sizes=args.sizing_sizes)
    if args.sizing_only and (args.no_postgres or not plan.sizing_sizes):
        parser.error("--sizing-only needs PostgreSQL and a sizing size")
    global PLAN
    PLAN = plan
    # A plain kill (SIGTERM) still drops the database and stops the token servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = Results(info=machine_info(argv), sizing_only=args.sizing_only)
    began = time.monotonic()
    try:
        with token_server() as server, token_server(plan.latency_ms) as slow:
            if not args.no_postgres:
                run_postgres(results, plan, args, server, slow)
            elif not args.no_sqlite:
                run_sqlite(results, plan, args, server)
    except Failure as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    results.info["load_after"] = os.getloadavg()
    results.info["seconds"] = time.monotonic() - began
    print(console(results, plan))
    if args.write and not args.sizing_only:
        (HERE / "results.md").write_text(render(results, plan, "md"))
        (HERE / "results.rst").write_text(render(results, plan, "rst"))
        (HERE / "results.json").write_text(json.dumps(results.__dict__, indent=1, default=str))
        write_readme_tables(results, plan)
        log(f"wrote {HERE / 'results.md'}, results.rst, results.json and README.rst's tables")
    if args.write and results.sizing:
        (HERE / "sizing.rst").write_text(render_sizing(results))
        raw = {"info": results.info, "commit": results.commit, "sizing": results.sizing}
        (HERE / "sizing.json").write_text(json.dumps(raw, indent=1, default=str))
        log(f"wrote {HERE / 'sizing.rst'} and sizing.json")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
