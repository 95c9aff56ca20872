"""``python example_project/manage.py slice_sandbox --site http://localhost:8000``.

Runs the Slice sandbox alone, on its own port, for a site of your own: migrates, creates
the sandbox's sign-in accounts, registers an OAuth client whose redirect URI is your
site's callback, prints what to paste into your site (the client's id and secret as
environment variables, ``OAUTHLIB_INSECURE_TRANSPORT`` because the sandbox is plain http,
and a ``SLICE_CONNECT`` block pointing at the sandbox), then serves until Ctrl-C.

The sandbox's cookies have their own names (``SLICE_SANDBOX_ONLY`` in the example
settings), so your site and the sandbox may share a host name: signing in to the sandbox
never replaces your site's session, which holds the pending link attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from example_project.demo.management.commands.demo import (
    LOGINS,
    MANAGE_PY,
    READY_TIMEOUT,
    ROOT,
    STOP_TIMEOUT,
    Child,
    Stop,
    _raise_stop,
    check_port,
    ensure_logins,
    migrate_all,
)
from example_project.slice_sandbox.setup import ensure_application

#: Marks the start of the block to paste (tests and scripts find it by this line).
BLOCK_START = "# --- Slice sandbox (development only; remove to use the real Slice) ---"
CALLBACK_PATH = "/slice/callback/"


def site_origin(value: str) -> str:
    """``http(s)://host[:port]`` of the site, without a path; a clear error otherwise."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(
            f"--site must be an http(s) URL such as http://localhost:8000, not {value!r}."
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise CommandError(
            f"--site is the site's origin only (e.g. http://localhost:8000), not {value!r}; "
            "use --redirect-uri for a callback under another path."
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def client_id_for(origin: str) -> str:
    """A readable client id, stable for a site: ``sandbox-localhost-8000``."""
    netloc = urlsplit(origin).netloc
    return "sandbox-" + re.sub(r"[^a-z0-9]+", "-", netloc.lower()).strip("-")


def client_secret_for(client_id: str) -> str:
    """A secret stable across runs (derived from the example project's SECRET_KEY).

    The sandbox stores only its hash, so it must be re-derivable to be printed again.
    """
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"slice-sandbox-client:{client_id}".encode(), hashlib.sha256
    ).hexdigest()
    return f"sandbox-secret-{digest[:40]}"


class Command(BaseCommand):
    help = (
        "Run the Slice sandbox on its own port for a site you name: register the site's "
        "redirect URI and print the settings to paste into it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--site",
            required=True,
            help="Your site's origin, e.g. http://localhost:8000 (where it runs).",
        )
        parser.add_argument(
            "--port", type=int, default=8001, help="Port of the sandbox (default 8001)."
        )
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Address the sandbox listens on and is reached at (default 127.0.0.1).",
        )
        parser.add_argument(
            "--redirect-uri",
            help=f"Your site's callback URL (default: the site + {CALLBACK_PATH}).",
        )
        parser.add_argument("--client-id", help="OAuth client id (default: from the site).")
        parser.add_argument(
            "--client-secret", help="OAuth client secret (default: derived, stable across runs)."
        )

    output_lock = threading.Lock()

    def handle(self, *args: Any, **options: Any) -> None:
        origin = site_origin(options["site"])
        host: str = options["host"]
        port: int = options["port"]
        if not 0 < port < 65536:
            raise CommandError(f"--port must be a TCP port, not {port}.")
        sandbox = f"http://{host}:{port}"
        site = urlsplit(origin)
        if (site.hostname, site.port or (443 if site.scheme == "https" else 80)) == (host, port):
            raise CommandError(
                f"The sandbox cannot use the site's own address ({sandbox}); pick another --port."
            )
        redirect_uri = options["redirect_uri"] or f"{origin}{CALLBACK_PATH}"
        redirect = urlsplit(redirect_uri)
        if redirect.scheme not in ("http", "https") or not redirect.hostname or redirect.fragment:
            raise CommandError(
                f"--redirect-uri must be an absolute http(s) URL, not {redirect_uri!r}."
            )
        client_id = options["client_id"] or client_id_for(origin)
        client_secret = options["client_secret"] or client_secret_for(client_id)

        check_port(host, port)
        migrate_all(self.stdout)
        ensure_logins()
        application = ensure_application(client_id, client_secret, [redirect_uri], name=site.netloc)
        self.stdout.write(f"Sandbox client {application.client_id!r} registered for {redirect_uri}")

        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
                "SLICE_SANDBOX_ONLY": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            }
        )
        server = Child(
            "slice",
            [sys.executable, str(MANAGE_PY), "runserver", f"{host}:{port}", "--noreload"],
            env,
            signal.SIGINT,
        )
        previous = {
            signum: signal.signal(signum, _raise_stop)
            for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
            if signum is not None
        }
        exit_code = 0
        try:
            server.copy_output(self.stdout, self.output_lock)
            self._wait_ready(server, host, port)
            self._print_block(sandbox, origin, redirect_uri, client_id, client_secret)
            while (code := server.process.poll()) is None:
                time.sleep(0.5)
            self.stderr.write(f"The sandbox server exited (status {code}).")
            exit_code = code or 1
        except (KeyboardInterrupt, Stop):
            self.stdout.write("\nStopping the sandbox...")
        finally:
            for signum in previous:
                signal.signal(signum, signal.SIG_IGN)
            server.stop()
            try:
                server.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.stderr.write("The sandbox server did not stop; killing it.")
            server.kill()
            server.process.wait()
            server.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write("Sandbox stopped.")
        if exit_code:
            raise CommandError(f"The sandbox server exited with status {exit_code}.")

    def _wait_ready(self, server: Child, host: str, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise CommandError("The sandbox server exited while starting.")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                if probe.connect_ex((host, port)) == 0:
                    return
            time.sleep(0.2)
        raise CommandError("The sandbox did not start within a minute.")

    def _print_block(
        self, sandbox: str, origin: str, redirect_uri: str, client_id: str, client_secret: str
    ) -> None:
        (user, password, _superuser), *_ = LOGINS
        insecure = any(urlsplit(url).scheme == "http" for url in (sandbox, redirect_uri))
        exports = [
            f"export SLICE_CLIENT_ID={shlex.quote(client_id)}",
            f"export SLICE_CLIENT_SECRET={shlex.quote(client_secret)}",
        ]
        if insecure:
            exports.append("export OAUTHLIB_INSECURE_TRANSPORT=1")
        block = [
            BLOCK_START,
            "SLICE_CONNECT = {",
            "    **SLICE_CONNECT,",
            f'    "AUTHORIZE_URL": "{sandbox}/oauth/authorize",',
            f'    "TOKEN_URL": "{sandbox}/oauth/token",',
            f'    "REVOKE_URL": "{sandbox}/oauth/revoke",',
            f'    "API_BASE_URL": "{sandbox}/api/v1/",',
            f'    "REDIRECT_URI": "{redirect_uri}",',
            "}",
        ]
        lines = [
            "",
            "=" * 72,
            f"  Slice sandbox running at {sandbox}/ for the site {origin}",
            f"  Redirect URI registered: {redirect_uri}",
            f"  Sign in on the sandbox's consent page as {user} / {password}",
            "  Stop: Ctrl-C",
            "=" * 72,
            "",
            "1. Start your site with these environment variables (the sandbox's client"
            + (
                ";\n   OAUTHLIB_INSECURE_TRANSPORT lets oauthlib use plain http, for the "
                "sandbox only):"
                if insecure
                else "):"
            ),
            "",
            *exports,
            "",
            "2. Add this to the end of your site's settings.py, after its SLICE_CONNECT:",
            "",
            *block,
            "",
        ]
        with self.output_lock:
            self.stdout.write("\n".join(lines))
            self.stdout.flush()
