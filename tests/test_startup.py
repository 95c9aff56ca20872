"""A fatal configuration stops every kind of process at start-up, not only ``manage.py``.

Django runs system checks only in ``manage.py``: a WSGI or ASGI server or a Celery worker
started with no client secret or no usable ``FERNET_KEYS`` used to come up and fail (or
encrypt under ``SECRET_KEY``) at the first request. Each case starts a real subprocess with
:mod:`tests.startup_settings` and checks its exit status and what it printed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import REDIS_URL
from .profiles import LONG
from .workers import ROOT

GOOD_CLIENT = {"CLIENT_ID": "startup-client", "CLIENT_SECRET": "startup-client-secret-value"}
GOOD_KEY = "startup-test-fernet-key-long-enough-to-use"
SECRET_KEY = "startup-test-secret-key-also-long-enough"

WSGI = "from django.core.wsgi import get_wsgi_application as get"
ASGI = "from django.core.asgi import get_asgi_application as get"
STARTED = "APPLICATION STARTED"


def env(*, unset: tuple[str, ...] = (), debug: bool = False, **overrides: Any) -> dict[str, str]:
    settings: dict[str, Any] = {
        "DEBUG": debug,
        "SECRET_KEY": SECRET_KEY,
        "FERNET_KEYS": [GOOD_KEY],
        "SLICE_CONNECT": dict(GOOD_CLIENT),
    }
    settings.update(overrides)
    values = dict(os.environ)
    for name in list(values):
        if name.startswith("SLICE_CONNECT_TEST_") and name != "SLICE_CONNECT_TEST_REDIS_URL":
            values.pop(name)
    values.update(
        DJANGO_SETTINGS_MODULE="tests.startup_settings",
        SLICE_CONNECT_TEST_OVERRIDES=json.dumps(settings),
        SLICE_CONNECT_TEST_UNSET=",".join(unset),
        PYTHONUNBUFFERED="1",
    )
    return values


def start_application(kind: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = f"{kind}\napplication = get()\nprint({STARTED!r})"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


#: name -> (settings changes, the check ids the refusal must list)
FATAL: dict[str, tuple[dict[str, Any], list[str]]] = {
    "no-client-id": ({"SLICE_CONNECT": {"CLIENT_SECRET": "s3cret-value"}}, ["E001"]),
    "no-client-secret": ({"SLICE_CONNECT": {"CLIENT_ID": "id"}}, ["E001"]),
    "blank-client-secret": (
        {"SLICE_CONNECT": {"CLIENT_ID": "id", "CLIENT_SECRET": "   "}},
        ["E013"],
    ),
    "no-fernet-keys": ({"unset": ("FERNET_KEYS",)}, ["E003"]),
    "empty-fernet-keys": ({"FERNET_KEYS": []}, ["E003"]),
    "plain-string-keys": ({"FERNET_KEYS": GOOD_KEY}, ["E005"]),
    "short-key": ({"FERNET_KEYS": [GOOD_KEY, "short-key-value"]}, ["E008"]),
    "secret-key-reused": ({"FERNET_KEYS": [SECRET_KEY]}, ["E007"]),
    "malformed-setting": ({"SLICE_CONNECT": {**GOOD_CLIENT, "TOKEN_ULR": "x"}}, ["E004"]),
    "everything": (
        {
            "SLICE_CONNECT": {"CLIENT_ID": "id", "CLIENT_SECRET": " "},
            "FERNET_KEYS": ["", "short-key-value", SECRET_KEY],
        },
        ["E006", "E007", "E008", "E013"],
    ),
}


def fatal_env(name: str) -> tuple[dict[str, str], list[str]]:
    changes, ids = FATAL[name]
    changes = dict(changes)
    unset = changes.pop("unset", ())
    return env(unset=unset, **changes), ids


def assert_refused(result: subprocess.CompletedProcess[str], ids: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert STARTED not in output
    assert "ImproperlyConfigured: slice_connect cannot start" in output, output[-3000:]
    for check_id in ids:
        assert f"slice_connect.{check_id}" in output
    # Every problem is listed, and no secret with it.
    assert f"{len(ids)} configuration problem(s)" in output
    for secret in ("s3cret-value", "short-key-value", SECRET_KEY, GOOD_KEY):
        assert secret not in output


#: Each problem under both server kinds in the long profile. In the quick one under one
#: kind, alternating, so that each kind refuses half of them: a start is a Python process
#: of about a second, and both kinds run the same check hook.
SERVER_REFUSALS = [
    pytest.param(name, kind, id=f"{name}-{kind_id}")
    for index, name in enumerate(FATAL)
    for kind_id, kind in (("wsgi", WSGI), ("asgi", ASGI))
    if LONG or (index % 2 == 0) == (kind_id == "wsgi")
]


@pytest.mark.parametrize(("name", "kind"), SERVER_REFUSALS)
def test_servers_refuse_to_start(name: str, kind: str) -> None:
    environment, ids = fatal_env(name)
    assert_refused(start_application(kind, environment), ids)


@pytest.mark.parametrize("kind", [WSGI, ASGI], ids=["wsgi", "asgi"])
def test_servers_start_with_a_good_configuration(kind: str) -> None:
    result = start_application(kind, env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert STARTED in result.stdout


@pytest.mark.parametrize("kind", [WSGI, ASGI], ids=["wsgi", "asgi"])
def test_non_fatal_problems_do_not_stop_a_server(kind: str) -> None:
    """No FERNET_KEYS with DEBUG on (W003), an http endpoint, a short LOCK_TIMEOUT."""
    environment = env(
        unset=("FERNET_KEYS",),
        debug=True,
        SLICE_CONNECT={**GOOD_CLIENT, "TOKEN_URL": "http://localhost/token", "LOCK_TIMEOUT": 5},
    )
    result = start_application(kind, environment)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_example_project_starts() -> None:
    values = dict(os.environ, DJANGO_SETTINGS_MODULE="example_project.settings")
    result = start_application(WSGI, values)
    assert result.returncode == 0, result.stderr[-3000:]


# -- manage.py: the checks report every problem, commands that skip checks still run -------


def manage(*args: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_check_reports_each_problem_as_a_check_error() -> None:
    environment, ids = fatal_env("everything")
    result = manage("check", environment=environment)
    assert result.returncode != 0
    assert "SystemCheckError" in result.stderr
    assert "ImproperlyConfigured" not in result.stderr
    for check_id in ids:
        assert f"(slice_connect.{check_id})" in result.stderr


@pytest.mark.parametrize("command", ["slice_connect_renew", "slice_connect_rotate_keys"])
def test_our_commands_stop_on_the_check_errors(command: str) -> None:
    environment, _ids = fatal_env("short-key")
    result = manage(command, "--dry-run", environment=environment)
    assert result.returncode != 0
    assert "(slice_connect.E008)" in result.stderr


def test_a_command_that_skips_checks_still_runs() -> None:
    """E.g. collectstatic in an image build, where the secrets are not available."""
    environment, _ids = fatal_env("no-client-secret")
    result = manage("shell", "-c", "print('shell ran')", environment=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shell ran" in result.stdout


# -- Celery -----------------------------------------------------------------------------


def celery_worker(
    environment: dict[str, str], log: Path, program: str = "worker"
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "example_project.celery", program]
    if program == "worker":
        command += [
            "--pool=solo",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    else:
        command += ["--loglevel=INFO", "--schedule", str(log.with_suffix(".schedule"))]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.parametrize(
    ("program", "name"),
    [
        ("worker", "no-client-secret"),
        ("worker", "no-fernet-keys"),
        ("worker", "everything"),
        ("beat", "plain-string-keys"),
    ],
)
def test_celery_refuses_to_start(program: str, name: str, tmp_path: Path) -> None:
    environment, ids = fatal_env(name)
    # A broker nobody listens on: the worker must stop before it ever tries to connect.
    environment["SLICE_CONNECT_TEST_OVERRIDES"] = json.dumps(
        {
            **json.loads(environment["SLICE_CONNECT_TEST_OVERRIDES"]),
            "CELERY_BROKER_URL": "redis://127.0.0.1:9/0",
        }
    )
    log = tmp_path / f"{program}.log"
    process = celery_worker(environment, log, program)
    try:
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    output = log.read_text(errors="replace")
    assert returncode != 0, output[-3000:]
    assert "slice_connect cannot start" in output
    for check_id in ids:
        assert f"slice_connect.{check_id}" in output
    assert " ready." not in output


@pytest.mark.redis
def test_celery_worker_starts_with_a_good_configuration(tmp_path: Path) -> None:
    environment = env(
        CELERY_BROKER_URL=REDIS_URL,
        CELERY_TASK_DEFAULT_QUEUE=f"slice-connect-startup-{os.getpid()}-{time.monotonic_ns()}",
        CELERY_WORKER_ENABLE_REMOTE_CONTROL=False,
    )
    log = tmp_path / "worker.log"
    process = celery_worker(environment, log)
    try:
        deadline = time.monotonic() + 90
        while " ready." not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the worker did not get ready"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    assert "slice_connect cannot start" not in log.read_text(errors="replace")


# -- a real ASGI server (uvicorn, a test dependency) ------------------------------------------


def uvicorn(environment: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "--factory", "--port", str(port)]
    command += ["--host", "127.0.0.1", "django.core.asgi:get_asgi_application"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_uvicorn_refuses_to_start(tmp_path: Path) -> None:
    environment, ids = fatal_env("everything")
    log = tmp_path / "uvicorn.log"
    process = uvicorn(environment, log, free_port())
    try:
        returncode = process.wait(timeout=120)
    finally:
        stop(process)
    output = log.read_text(errors="replace")
    assert returncode != 0, output[-3000:]
    assert "slice_connect cannot start" in output
    for check_id in ids:
        assert f"slice_connect.{check_id}" in output
    assert "Uvicorn running" not in output


def test_uvicorn_serves_with_a_good_configuration(tmp_path: Path) -> None:
    log, port = tmp_path / "uvicorn.log", free_port()
    process = uvicorn(env(), log, port)
    try:
        deadline = time.monotonic() + 90
        while "Uvicorn running" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/slice/authorize/")
        answer = connection.getresponse()
        connection.close()
        assert answer.status == 302  # to the login page: the app is up and serving
        assert answer.getheader("Location", "").startswith("/accounts/login/")
    finally:
        stop(process)
