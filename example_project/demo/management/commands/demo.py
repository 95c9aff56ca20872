"""``python example_project/manage.py demo``: one command to a working demo.

Migrates, creates the demo logins and the sandbox's OAuth application for the demo client,
then runs the site (Django's development server) and a Celery worker with embedded beat,
each in its own process group, until Ctrl-C stops both.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from example_project.demo import sandbox_db
from example_project.slice_sandbox.setup import ensure_application

ROOT = Path(__file__).resolve().parents[4]
MANAGE_PY = ROOT / "example_project" / "manage.py"

#: (username, password, superuser): printed by the command, so not secret.
LOGINS = (("demo", "slice-demo", False), ("admin", "slice-admin", True))

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def check_port(host: str, port: int) -> None:
    """A clear error when something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex((host, port)) == 0:
            raise CommandError(
                f"Something is already listening on {host}:{port} (a demo still "
                f"running?). Stop it, or use --port {port + 1}."
            )


def migrate_all(stdout: IO[str]) -> None:
    """Migrate every database (the site's and, with SQLite, the sandbox's file)."""
    for alias in settings.DATABASES:
        call_command("migrate", database=alias, interactive=False, verbosity=0)
        stdout.write(f"Database {alias!r} migrated ({settings.DATABASES[alias]['NAME']})")
    sandbox_db.sync_users()


def ensure_logins() -> None:
    """Create (or repair) the printed logins of :data:`LOGINS`."""
    user_model = get_user_model()
    for username, password, superuser in LOGINS:
        user, created = user_model._default_manager.get_or_create(
            **{user_model.USERNAME_FIELD: username},
            defaults={"email": f"{username}@example.com"},
        )
        changed = created
        if not user.check_password(password):
            user.set_password(password)
            changed = True
        if superuser and not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            changed = True
        if not user.is_active:
            user.is_active = True
            changed = True
        if changed:
            user.save()


class Stop(Exception):
    """A signal asked the demo to stop."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise Stop(signal.Signals(signum).name)


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the demo process dies (Linux only).

    Also give the child the default SIGINT and SIGTERM actions: a demo started in the
    background by a script inherits SIGINT ignored, and the web server would then ignore
    the SIGINT that asks it to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A subprocess whose output is copied to ours, each line prefixed with its name."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        stop_signal: int,
        ready_marker: str = "",
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        #: Set when a line of output contains ``ready_marker``.
        self.ready = threading.Event()
        self.ready_marker = ready_marker
        self.copier: threading.Thread | None = None
        posix = os.name == "posix"
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches only us, and we stop it (and, for
            # Celery, its pool processes) exactly once, in order.
            start_new_session=posix,
            preexec_fn=_die_with_parent if posix else None,
        )

    def copy_output(self, out: IO[str], lock: threading.Lock) -> None:
        """Start copying the child's output to ``out`` in a thread, until it closes."""
        self.copier = threading.Thread(target=self._copy, args=(out, lock), daemon=True)
        self.copier.start()

    def _copy(self, out: IO[str], lock: threading.Lock) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if self.ready_marker and self.ready_marker in line:
                self.ready.set()
            with lock:
                out.write(f"{self.name:>6} | {line}\n")
                out.flush()

    def stop(self) -> None:
        """Ask the child to stop: SIGINT for the web server, SIGTERM (warm) for Celery."""
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, self.stop_signal)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Finish copying the output (the pipe is at its end once the group is gone)."""
        if self.copier is not None:
            self.copier.join(timeout=2)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> None:
        """SIGKILL the child's whole process group (whatever is left of it)."""
        if os.name != "posix":
            self.process.kill()
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Command(BaseCommand):
    help = (
        "Run the example project with its Slice sandbox: migrate, create the demo logins "
        "and OAuth client, then serve the site and run a Celery worker with beat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=int(os.environ.get("DEMO_PORT", "8000")),
            help="Port on 127.0.0.1 (default 8000, or DEMO_PORT).",
        )
        parser.add_argument(
            "--real-clock",
            action="store_true",
            help="Keep Slice's token lifetimes (1 hour, 14 days) instead of minutes.",
        )
        parser.add_argument(
            "--no-worker",
            action="store_true",
            help="Do not run the Celery worker with beat (no background renewals).",
        )

    output_lock = threading.Lock()

    def handle(self, *args: Any, **options: Any) -> None:
        port: int = options["port"]
        fast_clock = not options["real_clock"]
        host = getattr(settings, "DEMO_HOST", "127.0.0.1")
        url = f"http://{host}:{port}"
        self._check_port(host, port)

        self._migrate()
        self._ensure_logins()
        redirect_uri = f"{url}/slice/callback/"
        ensure_application(
            settings.SLICE_CONNECT["CLIENT_ID"],
            settings.SLICE_CONNECT["CLIENT_SECRET"],
            [redirect_uri],
            name="Slice Connect demo",
        )
        self.stdout.write(f"Sandbox OAuth application ready for {redirect_uri}")

        env = self._child_env(port, fast_clock)
        children: list[Child] = []
        previous = {
            signum: signal.signal(signum, _raise_stop)
            for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
            if signum is not None
        }
        exit_code = 0
        try:
            self._start(children, env, host, port, worker=not options["no_worker"])
            self._wait_ready(children, host, port)
            self._banner(url, fast_clock, worker=not options["no_worker"])
            exit_code = self._supervise(children)
        except (KeyboardInterrupt, Stop):
            self.stdout.write("\nStopping the demo...")
        finally:
            for signum in previous:
                signal.signal(signum, signal.SIG_IGN)
            self._shut_down(children)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write("Demo stopped.")
        if exit_code:
            raise CommandError(f"A demo process exited with status {exit_code}.")

    # -- preparation ---------------------------------------------------------------------

    def _check_port(self, host: str, port: int) -> None:
        check_port(host, port)

    def _migrate(self) -> None:
        migrate_all(self.stdout)

    def _ensure_logins(self) -> None:
        ensure_logins()

    def _child_env(self, port: int, fast_clock: bool) -> dict[str, str]:
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        env["DEMO_PORT"] = str(port)
        env["DEMO_FAST_CLOCK"] = "1" if fast_clock else "0"
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    # -- processes -----------------------------------------------------------------------

    def _start(
        self, children: list[Child], env: dict[str, str], host: str, port: int, *, worker: bool
    ) -> None:
        """Start the web server and the worker, appending each to ``children`` at once."""
        children.append(
            Child(
                "web",
                [
                    sys.executable,
                    str(MANAGE_PY),
                    "runserver",
                    f"{host}:{port}",
                    "--noreload",
                ],
                env,
                signal.SIGINT,
            )
        )
        if worker:
            children.append(
                Child(
                    "worker",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "example_project.celery",
                        "worker",
                        "--beat",
                        "--loglevel=INFO",
                        "--concurrency=2",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                    env,
                    signal.SIGTERM,  # Celery's warm shutdown
                    ready_marker=" ready.",
                )
            )
        for child in children:
            child.copy_output(self.stdout, self.output_lock)

    def _wait_ready(self, children: list[Child], host: str, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        serving = False
        while time.monotonic() < deadline:
            for child in children:
                if child.process.poll() is not None:
                    raise CommandError(f"The {child.name} process exited while starting.")
            if not serving:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    serving = probe.connect_ex((host, port)) == 0
            if serving and all(c.ready.is_set() for c in children if c.ready_marker):
                return
            time.sleep(0.2)
        raise CommandError("The demo did not start within a minute.")

    def _supervise(self, children: list[Child]) -> int:
        while True:
            for child in children:
                code = child.process.poll()
                if code is not None:
                    self.stderr.write(f"The {child.name} process exited (status {code}).")
                    return code or 1
            time.sleep(0.5)

    def _shut_down(self, children: list[Child]) -> None:
        for child in children:
            child.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"The {child.name} process did not stop; killing it.")
            child.kill()
            child.process.wait()
            child.close()

    def _banner(self, url: str, fast_clock: bool, *, worker: bool) -> None:
        (user, password, _), (admin, admin_password, _) = LOGINS
        if fast_clock:
            clock = (
                "fast: access tokens last 2 minutes, refresh tokens 10 minutes; the\n"
                "             worker renews a link 5 minutes after it was made or last\n"
                "             renewed (--real-clock keeps Slice's 1 hour and 14 days)"
            )
        else:
            clock = "real: access tokens last 1 hour, refresh tokens 14 days"
        renewals = (
            "a Celery worker with beat renews due links in the background"
            if worker
            else "no worker (--no-worker): links renew only when a page uses them"
        )
        lines = [
            "",
            "=" * 72,
            "  Slice Connect demo is running",
            f"  Open:      {url}/",
            f"  Log in:    {user} / {password}",
            f"  Admin:     {url}/admin/  ({admin} / {admin_password})",
            "  Slice:     the sandbox is served by the same site (consent page, API)",
            f"  Clock:     {clock}",
            f"  Renewals:  {renewals}",
            "  Stop:      Ctrl-C",
            "=" * 72,
            "",
        ]
        with self.output_lock:
            self.stdout.write("\n".join(lines))
