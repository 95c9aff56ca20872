"""Helpers of the concurrency and Celery tests: linking many users, renewal scripts, a worker.

* :func:`link_all` runs the real link flow for several browser sessions at once.

* :func:`subprocess_env` builds the environment of a child that shares the parent's test
  database and talks to the parent's live-server sandbox (read by
  :mod:`tests.worker_settings`).
* ``python -m tests.workers DIR --pk 3 [--pk 4 ...] [--calls 25] [--seed 1]`` is a renewal
  script: it sets Django up, connects, creates ``DIR/ready-<pid>``, waits for ``DIR/go``, calls
  :func:`slice_connect.services.renew_with_result` ``--calls`` times over the given
  credentials and prints one JSON line. It prints token fingerprints, never tokens.
* :class:`CeleryWorker` starts a real ``celery worker`` and always stops it, bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "tests.worker_settings"
GO_FILE = "go"
WAIT_SECONDS = 60.0


# -- linking -----------------------------------------------------------------------------


def link_all(base: str, sessions: Sequence[requests.Session], *, parallel: int = 5) -> None:
    """Link every logged-in session through the real OAuth flow (HTTP only, a few at once)."""
    from .flow import link

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        statuses = list(pool.map(lambda session: link(session, base).status_code, sessions))
    assert statuses == [302] * len(sessions), statuses


# -- environment -------------------------------------------------------------------------


def subprocess_env(
    slice_connect: Mapping[str, Any],
    *,
    redis_url: str | None = None,
    celery_queue: str | None = None,
) -> dict[str, str]:
    """The environment of a child that uses the parent's test database and sandbox."""
    from django.db import connection

    database = {
        key: connection.settings_dict[key]
        for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")
    }
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
        SLICE_CONNECT_TEST_DATABASE=json.dumps(database),
        SLICE_CONNECT_TEST_SLICE_CONNECT=json.dumps(dict(slice_connect)),
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["SLICE_CONNECT_TEST_REDIS_URL"] = redis_url
    if celery_queue:
        env["SLICE_CONNECT_TEST_CELERY_QUEUE"] = celery_queue
    env.pop("SLICE_CONNECT_REQUIRE", None)
    return env


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- renewal script ----------------------------------------------------------------------


@dataclass
class RenewalProcesses:
    """N copies of the renewal script, started together and released together."""

    directory: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, count: int, pks: Sequence[int], *, calls: int = 1) -> None:
        args = [arg for pk in pks for arg in ("--pk", str(pk))]
        for index in range(count):
            command = [sys.executable, "-m", "tests.workers", str(self.directory), *args]
            command += ["--calls", str(calls), "--seed", str(index)]
            self.processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )

    def release(self) -> None:
        """Wait until every process is connected to the database, then let them all go."""

        def all_ready() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    _out, err = process.communicate()
                    raise AssertionError(f"renewal script exited early:\n{err[-3000:]}")
            return len(list(self.directory.glob("ready-*"))) == len(self.processes)

        wait_until(all_ready, timeout=WAIT_SECONDS, what="the renewal scripts to start")
        (self.directory / GO_FILE).touch()

    def results(self) -> list[dict[str, Any]]:
        """Each process's JSON report (bounded wait)."""
        reports = []
        for process in self.processes:
            out, err = process.communicate(timeout=WAIT_SECONDS)
            assert process.returncode == 0, f"renewal script failed:\n{err[-3000:]}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports

    def stop(self) -> None:
        """Kill whatever is still running (only after a failure); never leaves orphans."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            try:
                process.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass


def _renewal_script(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.workers")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--pk", type=int, action="append", required=True)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    import django

    django.setup()
    from django.db import connection

    from slice_connect import services
    from tests.helpers import fingerprint

    # Each credential at least twice, in an order of this process's own.
    plan = (options.pk * (options.calls // len(options.pk) + 1))[: options.calls]
    random.Random(options.seed).shuffle(plan)

    connection.ensure_connection()
    (options.directory / f"ready-{os.getpid()}").touch()
    go = options.directory / GO_FILE
    deadline = time.monotonic() + WAIT_SECONDS
    while not go.exists():
        if time.monotonic() > deadline:
            print("never released", file=sys.stderr)
            return 2
        time.sleep(0.001)

    started = time.time()
    calls: list[dict[str, Any]] = []
    for pk in plan:
        entry: dict[str, Any] = {"pk": pk}
        try:
            result = services.renew_by_id(pk)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        else:
            token = result.credential.access_token
            entry.update(
                renewed=result.renewed,
                version=result.credential.version,
                fingerprint=fingerprint(token) if isinstance(token, str) else None,
            )
        calls.append(entry)
    finished = time.time()
    connection.close()
    print(json.dumps({"started": started, "finished": finished, "calls": calls}), flush=True)
    return 0


# -- Celery worker -----------------------------------------------------------------------

TASK_LINE = re.compile(
    r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] (?P<event>received|succeeded|failed|retry)"
    r"(?: in [0-9.e-]+s: (?P<result>.*))?"
)


@dataclass
class TaskEvent:
    name: str
    id: str
    event: str
    result: str | None


@dataclass
class CeleryWorker:
    """A real ``celery -A example_project.celery worker`` subprocess (prefork pool)."""

    env: dict[str, str]
    log_path: Path
    concurrency: int = 2
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    #: The module holding the Celery app (``celery -A``) and the node name's prefix.
    app_module: str = "example_project.celery"
    node_prefix: str = "slice-connect-test"

    def start(self) -> None:
        assert self.process is None, "already started"
        nodename = f"{self.node_prefix}-{os.getpid()}-{time.monotonic_ns()}@%h"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "--pool=prefork",
            f"--concurrency={self.concurrency}",
            "--loglevel=INFO",
            "--hostname",
            nodename,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killing it takes the pool too
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None, event: str | None = None) -> list[TaskEvent]:
        found = [TaskEvent(**m.groupdict()) for m in TASK_LINE.finditer(self.log())]
        return [e for e in found if (name is None or e.name == name) and (event in (None, e.event))]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"Celery worker exited early:\n{self.log()[-4000:]}")
            return " ready." in self.log()

        wait_until(ready, timeout=timeout, what="the Celery worker to be ready")

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of its process group if it hangs."""
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            # Pool children left behind by a crashed parent share its process group.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            self.process = None
            if self._log is not None:
                self._log.close()
                self._log = None


if __name__ == "__main__":
    sys.exit(_renewal_script(sys.argv[1:]))
