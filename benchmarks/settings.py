"""Django settings for the benchmarks (not the test suite's: no sandbox, no debug).

Read from the environment, set by ``benchmarks/run.py`` for each worker process:

``SLICE_BENCH_DB``
    ``postgres://user@host:port/name`` or ``sqlite:////absolute/path.sqlite3``.
``SLICE_BENCH_SERVER``
    Base URL of the local token server (``benchmarks/token_server.py``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from example_project.database_url import database_from_url

SECRET_KEY = "slice-connect-benchmarks-not-secret"
# DEBUG stays off: with it on Django keeps every query in memory, which would both slow
# the renewals and ruin the RSS figures. Query counts use CaptureQueriesContext.
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "slice_connect",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "benchmarks.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]


def _database(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return database_from_url(url, "bench_slice_connect")
    if parts.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": parts.path,
            # Several threads write: take the write lock at BEGIN (no upgrade deadlocks,
            # which SQLite reports as "database is locked" at once) and wait for it.
            # WAL: one fsync per commit instead of the rollback journal's several (still
            # synchronous=FULL, so every commit is durable).
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 60,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
            },
        }
    raise ValueError(f"Unsupported SLICE_BENCH_DB: {url!r}")


DATABASES = {
    "default": _database(
        os.environ.get("SLICE_BENCH_DB", "postgres://postgres@127.0.0.1:5432/bench_slice_connect")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
FERNET_KEYS = ["slice-connect-benchmark-key-1-not-a-real-secret"]

SERVER = os.environ.get("SLICE_BENCH_SERVER", "http://127.0.0.1:9")
SLICE_CONNECT = {
    "CLIENT_ID": "bench-client-id",
    "CLIENT_SECRET": "bench-client-secret",
    # Never fetched (the test client only reads the redirect); oauthlib wants https here.
    "AUTHORIZE_URL": "https://slice.test/oauth/authorize",
    "TOKEN_URL": f"{SERVER}/oauth/token",
    "REVOKE_URL": f"{SERVER}/oauth/revoke",
    "API_BASE_URL": f"{SERVER}/api/v1/",
    "RENEW_BATCH_SIZE": int(os.environ.get("SLICE_BENCH_BATCH_SIZE", "500")),
}
# The local server speaks plain http on loopback.
SILENCED_SYSTEM_CHECKS = ["slice_connect.E002"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "level": "ERROR"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

CELERY_BROKER_URL = "memory://"
CELERY_TASK_ALWAYS_EAGER = False
