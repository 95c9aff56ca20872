"""A brand-new site, built from README.rst alone.

The README marks what a reader copies: ``.. readme-command: NAME`` before the quick start's
two commands, ``.. new-site: append PATH`` / ``create PATH`` before each snippet of "A new
site, step by step" and of the Celery section, ``.. new-site: run`` before the commands that
start the site and ``.. new-site: sandbox`` before the sandbox command. These tests extract
them, so they break when README drifts:

* the two commands are single lines that need only ``python3`` and ``venv``, and are the
  ones ``.ci/run`` runs;
* ``manage.py slice_sandbox`` (the documented command) registers the site's redirect URI
  and prints a block that works;
* django-celery-beat's ``DatabaseScheduler`` creates the periodic task from the README's
  ``CELERY_BEAT_SCHEDULE`` by itself;
* in Chromium: ``django-admin startproject`` plus exactly the README's snippets, the
  sandbox, ``runserver``; a user logs in, links through the consent page, the site calls
  ``SliceClient``, and the user unlinks.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import CHROMIUM, service_missing

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
CI_RUN = ROOT / ".ci" / "run"
MARKER = re.compile(r"^\.\. (readme-command|new-site): (.+?)\s*$")
START_TIMEOUT = 90.0
PASSWORD = "new-site-password-1"
SANDBOX_COMMAND = [sys.executable, "example_project/manage.py", "slice_sandbox"]


# -- reading README.rst ----------------------------------------------------------------------


@dataclass
class Snippet:
    kind: str  # "readme-command" or "new-site"
    target: str  # "demo", "append mysite/settings.py", "run", ...
    text: str


def readme_snippets() -> list[Snippet]:
    """Each marked code block of README.rst, in order, dedented."""
    lines = README.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        match = MARKER.match(lines[i])
        i += 1
        if not match:
            continue
        while i < len(lines) and not lines[i].startswith(".. code-block::"):
            assert not lines[i].strip(), f"README.rst:{i + 1}: a marker must precede a code block"
            i += 1
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
            block.append(lines[i][4:])
            i += 1
        snippets.append(Snippet(match[1], match[2], "\n".join(block).strip("\n") + "\n"))
    return snippets


def snippet(kind: str, target: str) -> str:
    found = [s.text for s in readme_snippets() if (s.kind, s.target) == (kind, target)]
    assert len(found) == 1, f"README.rst has {len(found)} blocks marked {kind}: {target}"
    return found[0]


def ci_command(name: str) -> str:
    match = re.search(rf"^{name}='([^']*)'$", CI_RUN.read_text(), re.MULTILINE)
    assert match, f".ci/run defines no {name}"
    return match[1]


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Process:
    """A subprocess in its own process group whose output is collected by a thread."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> Process:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # Ctrl-C must work even when this test runs with SIGINT ignored (a background
            # job of a script): exec keeps an ignored signal ignored.
            preexec_fn=_default_sigint,
        )
        process = cls(name, popen)
        process.reader = threading.Thread(target=process._collect, daemon=True)
        process.reader.start()
        return process

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.popen.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                if text in self.output:
                    return
                pytest.fail(f"{self.name} exited ({self.popen.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not print {text!r}:\n{self.output}")
            time.sleep(0.1)

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as a person would; SIGKILL the group if it does not stop."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
                pytest.fail(f"{self.name} did not stop on Ctrl-C:\n{self.output}")
        return self.popen.returncode


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            try:
                os.killpg(process.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.popen.wait()
        if process.reader is not None:
            process.reader.join(timeout=5)  # the pipe is at its end once the group is gone
        if process.popen.stdout is not None:
            process.popen.stdout.close()


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "SLICE_", "OAUTHLIB_", "DEMO_", "DATABASE_URL"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    # The sandbox's SQLite files live in the test's folder, not in the checkout.
    env["DEMO_DATA_DIR"] = str(tmp_path / "sandbox-data")
    return env


@dataclass
class SandboxOutput:
    env: dict[str, str]
    block: str


def parse_sandbox_output(output: str) -> SandboxOutput:
    """The ``export`` lines and the settings block the sandbox command prints."""
    exports: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            exports[name] = shlex.split(value)[0]
    start = output.index("# --- Slice sandbox")
    end = output.index("\n}", start) + 2
    return SandboxOutput(exports, output[start:end])


def start_sandbox(
    processes: list[Process], env: dict[str, str], sandbox_port: int, site: str
) -> tuple[Process, SandboxOutput]:
    """Run the README's sandbox command (its port and site replaced by free ones)."""
    command = snippet("new-site", "sandbox").strip()
    argv = shlex.split(command)
    assert argv[:3] == ["python", "example_project/manage.py", "slice_sandbox"], command
    assert argv[argv.index("--port") + 1] == "8001"
    assert argv[argv.index("--site") + 1] == "http://localhost:8000"
    argv[0] = sys.executable
    argv[argv.index("--port") + 1] = str(sandbox_port)
    argv[argv.index("--site") + 1] = site
    sandbox = Process.start("slice_sandbox", argv, ROOT, env)
    processes.append(sandbox)
    sandbox.wait_for("\n}")
    return sandbox, parse_sandbox_output(sandbox.output)


# -- the README's two commands -------------------------------------------------------------


def test_readme_commands_are_one_venv_line_each_and_ci_runs_them() -> None:
    demo = snippet("readme-command", "demo").strip()
    test = snippet("readme-command", "test").strip()
    for command in (demo, test):
        assert "\n" not in command
        # Nothing but python3 and its venv: pip runs inside the venv (PEP 668 safe).
        assert command.startswith("python3 -m venv .venv && .venv/bin/python -m pip install ")
        assert "python3 -m pip" not in command and "sudo" not in command
    assert demo.endswith(".venv/bin/tox -e demo")
    assert test.endswith(".venv/bin/tox")
    assert ci_command("DEMO_COMMAND") == demo
    assert ci_command("TEST_COMMAND") == test


# -- the sandbox for any site ----------------------------------------------------------------


def test_sandbox_command_registers_the_site_and_prints_working_settings(
    tmp_path: Path, processes: list[Process]
) -> None:
    port, site_port = free_port(), free_port()
    site = f"http://localhost:{site_port}"
    sandbox, printed = start_sandbox(processes, base_env(tmp_path), port, site)
    sandbox_url = f"http://127.0.0.1:{port}"

    assert printed.env["OAUTHLIB_INSECURE_TRANSPORT"] == "1"
    client_id, client_secret = printed.env["SLICE_CLIENT_ID"], printed.env["SLICE_CLIENT_SECRET"]
    namespace: dict[str, Any] = {"SLICE_CONNECT": {"LINK_SUCCESS_URL": "home"}}
    exec(compile(printed.block, "<sandbox block>", "exec"), namespace)
    assert namespace["SLICE_CONNECT"] == {
        "LINK_SUCCESS_URL": "home",  # kept from the site's own block
        "AUTHORIZE_URL": f"{sandbox_url}/oauth/authorize",
        "TOKEN_URL": f"{sandbox_url}/oauth/token",
        "REVOKE_URL": f"{sandbox_url}/oauth/revoke",
        "API_BASE_URL": f"{sandbox_url}/api/v1/",
        "REDIRECT_URI": f"{site}/slice/callback/",
    }

    # Registered: the sandbox's own table has the client with exactly that redirect URI.
    with sqlite3.connect(tmp_path / "sandbox-data" / "sandbox.sqlite3") as db:
        rows = db.execute(
            "SELECT redirect_uris, client_secret FROM oauth2_provider_application "
            "WHERE client_id = ?",
            (client_id,),
        ).fetchall()
    assert [row[0] for row in rows] == [f"{site}/slice/callback/"]
    assert client_secret not in rows[0][1]  # stored hashed

    timeout = 10
    # The consent page accepts the site's callback (a Slice login comes first) ...
    query = {"client_id": client_id, "response_type": "code", "state": "s" * 20}
    answer = requests.get(
        f"{sandbox_url}/oauth/authorize",
        params={**query, "redirect_uri": f"{site}/slice/callback/"},
        allow_redirects=False,
        timeout=timeout,
    )
    assert answer.status_code == 302 and "/accounts/login/" in answer.headers["Location"]
    # Signing in to the sandbox sets cookies of its own names only, so a site on the same
    # host name keeps its session (and its pending link attempt).
    with requests.Session() as browser:
        login = f"{sandbox_url}/accounts/login/"
        browser.get(login, timeout=timeout).raise_for_status()
        assert set(browser.cookies.keys()) == {"slice_sandbox_csrftoken"}
        signed_in = browser.post(
            login,
            data={
                "username": "demo",
                "password": "slice-demo",
                "csrfmiddlewaretoken": browser.cookies["slice_sandbox_csrftoken"],
            },
            headers={"Referer": login},
            allow_redirects=False,
            timeout=timeout,
        )
        assert signed_in.status_code == 302, signed_in.text
        assert set(browser.cookies.keys()) == {
            "slice_sandbox_csrftoken",
            "slice_sandbox_sessionid",
        }
    # ... the printed secret authenticates the client (a bad code, not a bad client) ...
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "authorization_code",
    }
    token = requests.post(
        f"{sandbox_url}/oauth/token",
        data={**form, "code": "nope", "redirect_uri": f"{site}/slice/callback/"},
        timeout=timeout,
    )
    assert token.json()["error"] == "invalid_grant"
    wrong = requests.post(
        f"{sandbox_url}/oauth/token",
        data={**form, "client_secret": "wrong", "code": "nope"},
        timeout=timeout,
    )
    assert wrong.json()["error"] == "invalid_client"
    # ... and its home page says what it is.
    assert "Slice sandbox" in requests.get(f"{sandbox_url}/", timeout=timeout).text

    assert sandbox.interrupt() == 0
    assert "Sandbox stopped." in sandbox.output
    assert "killing it" not in sandbox.output


def test_sandbox_command_refuses_a_bad_site(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    for site in ("localhost:8000", "http://localhost:8000/accounts/", "ftp://x"):
        result = subprocess.run(
            [*SANDBOX_COMMAND, "--site", site],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0
        assert "--site" in result.stderr, result.stderr
    assert not (tmp_path / "sandbox-data" / "sandbox.sqlite3").exists()


def test_sandbox_command_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*SANDBOX_COMMAND, "--port", str(port), "--site", "http://localhost:8000"],
            cwd=ROOT,
            env=base_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"Something is already listening on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "sandbox-data" / "sandbox.sqlite3").exists()


# -- a new project from the README -----------------------------------------------------------


def new_project(tmp_path: Path, env: dict[str, str]) -> Path:
    """``django-admin startproject mysite`` plus the README's snippets, in order."""
    (tmp_path / "site").mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path / "site")],
        check=True,
        env=env,
        timeout=60,
    )
    project = tmp_path / "site"
    for item in readme_snippets():
        if item.kind != "new-site" or item.target in ("run", "sandbox"):
            continue
        action, path = item.target.split(" ", 1)
        target = project / path
        if action == "create":
            assert not target.exists(), target
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item.text, encoding="utf-8")
        else:
            assert action == "append" and target.exists(), item.target
            with target.open("a", encoding="utf-8") as file:
                file.write("\n\n" + item.text)
    return project


def run_block_env(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The README's ``run`` block: its ``export`` lines run by bash; the rest returned."""
    exports, commands = [], []
    for line in snippet("new-site", "run").splitlines():
        (exports if line.startswith("export ") else commands).append(line)
    assert exports, "README's run block sets SLICE_CONNECT_FERNET_KEY"
    result = subprocess.run(
        ["bash", "-c", "set -e; " + "; ".join(exports) + "; env -0"],
        env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    exported = dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)
    names = [line.split()[1].split("=", 1)[0] for line in exports]
    return {name: exported[name] for name in names}, commands


def manage(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def last_line(output: str) -> str:
    """The script's own output (Django 5.2's shell may first report its automatic imports)."""
    return output.strip().splitlines()[-1]


def test_django_celery_beat_creates_the_periodic_task_from_the_setting(tmp_path: Path) -> None:
    try:
        import django_celery_beat  # noqa: F401
    except ImportError:
        service_missing("celery-beat", "needs django-celery-beat (pip install -e '.[test]')")
    env = base_env(tmp_path)
    project = new_project(tmp_path, env)
    assert '"django_celery_beat"' in (project / "mysite" / "settings.py").read_text()
    env.update(
        SLICE_CONNECT_FERNET_KEY=secrets.token_urlsafe(32),
        SLICE_CLIENT_ID="client",
        SLICE_CLIENT_SECRET="secret",
    )
    manage(project, env, "migrate", "--verbosity=0")
    script = (
        "from django_celery_beat.models import PeriodicTask\n"
        "from django_celery_beat.schedulers import DatabaseScheduler\n"
        "from mysite import celery_app\n"
        "assert not PeriodicTask.objects.filter(name='slice-connect-renew').exists()\n"
        "DatabaseScheduler(app=celery_app)  # what `beat --scheduler ...` does at start\n"
        "task = PeriodicTask.objects.get(name='slice-connect-renew')\n"
        "print(task.task, task.enabled, task.crontab.minute, task.crontab.hour)\n"
    )
    out = last_line(manage(project, env, "shell", "-c", script).stdout).split()
    assert out == ["slice_connect.renew_due_credentials", "True", "17", "*"]


@pytest.mark.browser
def test_new_site_links_a_user_in_chromium(
    tmp_path: Path, processes: list[Process], request: pytest.FixtureRequest
) -> None:
    """startproject + README + sandbox + runserver; link in Chromium; SliceClient; unlink."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("browser", "needs the playwright package (pip install -e .[test])")
    started = time.monotonic()
    env = base_env(tmp_path)
    project = new_project(tmp_path, env)
    exported, commands = run_block_env(env)
    env.update(exported)
    assert commands == [
        "python manage.py migrate",
        "python manage.py createsuperuser",
        "python manage.py runserver",
    ]

    site_port, sandbox_port = free_port(), free_port()
    site = f"http://localhost:{site_port}"
    sandbox, printed = start_sandbox(processes, base_env(tmp_path), sandbox_port, site)
    with (project / "mysite" / "settings.py").open("a", encoding="utf-8") as file:
        file.write("\n\n" + printed.block)
    env.update(printed.env)

    manage(project, env, "migrate", "--verbosity=0")
    manage(
        project,
        {**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        "createsuperuser",
        "--noinput",
        "--username=alice",
        "--email=alice@example.com",
    )
    server = Process.start(
        "runserver",
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{site_port}", "--noreload"],
        project,
        env,
    )
    processes.append(server)
    server.wait_for("Quit the server with")
    assert "slice_connect." not in server.output, server.output  # no system check warnings

    artifacts = ROOT / "test-artifacts" / "browser" / request.node.name
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(20_000)
            page.goto(f"{site}/")
            page.click("a:has-text('Log in')")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url(f"{site}/")
            assert "Your Slice account is not linked." in page.inner_text("body")
            page.screenshot(path=str(artifacts / "01-home.png"))
            page.click("button:has-text('Connect Slice')")
            # The sandbox: sign in as its Slice user, then the consent page.
            page.wait_for_url(re.compile(rf"http://127\.0\.0\.1:{sandbox_port}/accounts/login/"))
            page.fill("#id_username", "demo")
            page.fill("#id_password", "slice-demo")
            page.click("button:has-text('Sign in')")
            page.wait_for_url(re.compile(rf"http://127\.0\.0\.1:{sandbox_port}/oauth/authorize"))
            assert "to access your Slice account?" in page.inner_text("h1")
            page.screenshot(path=str(artifacts / "02-consent.png"))
            page.click("button:has-text('Allow')")
            page.wait_for_url(f"{site}/")
            assert "Your Slice account is linked." in page.inner_text("body")
            linked_after = time.monotonic() - started
            page.screenshot(path=str(artifacts / "03-linked.png"))

            me = manage(
                project,
                env,
                "shell",
                "-c",
                "from django.contrib.auth import get_user_model\n"
                "from slice_connect.client import SliceClient\n"
                "with SliceClient(get_user_model().objects.get(username='alice')) as slice:\n"
                "    print(sorted(slice.get('users/self')['result']))\n",
            ).stdout
            assert "'firstName'" in last_line(me) and "'userEmail'" in last_line(me), me

            page.click("button:has-text('Unlink Slice')")
            page.wait_for_url(f"{site}/")
            assert "Your Slice account is not linked." in page.inner_text("body")
            page.screenshot(path=str(artifacts / "04-unlinked.png"))
        finally:
            browser.close()
    unlinked = last_line(
        manage(
            project,
            env,
            "shell",
            "-c",
            "from slice_connect.models import SliceCredential\n"
            "print(SliceCredential.objects.count())\n",
        ).stdout
    )
    assert unlinked == "0"
    print(f"\nNEW SITE startproject -> linked user: {linked_after:.1f}s")
    assert server.interrupt() in (0, -signal.SIGINT)
    assert sandbox.interrupt() == 0
