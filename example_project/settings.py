"""Settings of the example project: a small site using slice_connect, with a Slice sandbox.

Needs no services by default: SQLite files and a filesystem Celery broker under
``example_project/.demo/``. Environment variables:

``DATABASE_URL``       ``postgres://user:password@host:port/name`` uses PostgreSQL instead.
``CELERY_BROKER_URL``  ``redis://host:port/db`` uses Redis instead of the filesystem broker.
``DEMO_PORT``          port of the site (default 8000); the sandbox is served by the same site.
``DEMO_FAST_CLOCK``    ``1`` compresses token lifetimes so renewals happen within minutes
                       (the ``demo`` command sets it unless run with ``--real-clock``).
``FERNET_KEYS``        comma-separated token encryption keys (a demo key by default).
``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG`` (``1`` by default).
``DEMO_DATA_DIR``      folder of the SQLite files and the filesystem broker (default
                       ``example_project/.demo``).
``SLICE_SANDBOX_ONLY`` ``1`` serves only the Slice sandbox, for another site (the
                       ``slice_sandbox`` command sets it): its own URLs and cookie names.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery.schedules import crontab

from example_project.database_url import database_from_url
from example_project.slice_sandbox.conf import oauth2_provider_settings

PROJECT_DIR = Path(__file__).resolve().parent
DEMO_DIR = Path(os.environ.get("DEMO_DATA_DIR") or PROJECT_DIR / ".demo")


def env_flag(name: str, default: bool) -> bool:
    """Read a yes/no environment variable."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


# The sandbox is served over plain http on 127.0.0.1, and oauthlib refuses http endpoints
# unless this is set. Never set it for a site that talks to the real Slice.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-demo-key-not-secret")
DEBUG = env_flag("DJANGO_DEBUG", True)
DEMO_HOST = "127.0.0.1"
DEMO_PORT = int(os.environ.get("DEMO_PORT", "8000"))
DEMO_FAST_CLOCK = env_flag("DEMO_FAST_CLOCK", False)
ALLOWED_HOSTS = [DEMO_HOST, "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "oauth2_provider",
    "example_project.slice_sandbox",
    "example_project.demo",
    "slice_connect",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "example_project.demo.middleware.CanonicalHostMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
STATIC_URL = "/static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PROJECT_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# `manage.py slice_sandbox` serves only the sandbox (Slice's side) for a site of your own.
# Its cookies get their own names, so a site on the same host name keeps its session (and
# its pending link attempt) while the user signs in to the sandbox.
SANDBOX_ONLY = env_flag("SLICE_SANDBOX_ONLY", False)
if SANDBOX_ONLY:
    ROOT_URLCONF = "example_project.sandbox_urls"
    LOGIN_REDIRECT_URL = "sandbox-home"
    SESSION_COOKIE_NAME = "slice_sandbox_sessionid"
    CSRF_COOKIE_NAME = "slice_sandbox_csrftoken"
    MIDDLEWARE.remove("example_project.demo.middleware.CanonicalHostMiddleware")

# -- databases ---------------------------------------------------------------------------


def sqlite_database(name: str) -> dict[str, Any]:
    """A SQLite file under .demo/ that a web server and a worker can share."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DEMO_DIR / name,
        "OPTIONS": {
            # Take the write lock when a transaction starts, and wait for it, instead of
            # failing with "database is locked" when a reader later tries to write.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }


DEMO_DIR.mkdir(parents=True, exist_ok=True)

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"], "slice_connect_demo")}
    DATABASE_ROUTERS: list[str] = []
else:
    # Renewal holds the credential's row lock while it calls the token endpoint, which
    # this same site serves. SQLite locks the whole file, so the sandbox (standing in for
    # Slice, which has its own database anyway) writes its tables to a second file.
    DATABASES = {
        "default": sqlite_database("site.sqlite3"),
        "sandbox": sqlite_database("sandbox.sqlite3"),
    }
    DATABASE_ROUTERS = ["example_project.demo.sandbox_db.SandboxRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- slice_connect and its Slice sandbox -------------------------------------------------

DEMO_FERNET_KEY = "example-project-demo-fernet-key-not-secret"
FERNET_KEYS = [
    key.strip() for key in os.environ.get("FERNET_KEYS", DEMO_FERNET_KEY).split(",") if key.strip()
]

DEMO_URL = f"http://{DEMO_HOST}:{DEMO_PORT}"

SLICE_CONNECT: dict[str, Any] = {
    "CLIENT_ID": "slice-connect-demo",
    "CLIENT_SECRET": "slice-connect-demo-secret",
    "AUTHORIZE_URL": f"{DEMO_URL}/oauth/authorize",
    "TOKEN_URL": f"{DEMO_URL}/oauth/token",
    "REVOKE_URL": f"{DEMO_URL}/oauth/revoke",
    "API_BASE_URL": f"{DEMO_URL}/api/v1/",
    "REDIRECT_URI": f"{DEMO_URL}/slice/callback/",
    "LINK_SUCCESS_URL": "home",
}
SLICE_SANDBOX: dict[str, Any] = {}
RENEW_EVERY: float | crontab = crontab(minute=17)  # hourly

if DEMO_FAST_CLOCK:
    # Minutes instead of days: a link is renewed by the worker about five minutes after
    # it was made (or last renewed), and access tokens expire every two minutes.
    SLICE_SANDBOX = {"ACCESS_TOKEN_SECONDS": 120, "REFRESH_TOKEN_SECONDS": 600}
    SLICE_CONNECT.update(
        {
            "REFRESH_TOKEN_LIFETIME": timedelta(minutes=10),
            "RENEW_WITHIN": timedelta(minutes=5),
            "ACCESS_TOKEN_LEEWAY": timedelta(seconds=30),
            "RENEW_SPREAD": timedelta(seconds=30),
            "RENEW_RETRY_BACKOFF": timedelta(seconds=5),
            "RENEW_RETRY_BACKOFF_MAX": timedelta(seconds=60),
        }
    )
    RENEW_EVERY = 30.0

OAUTH2_PROVIDER = oauth2_provider_settings(**SLICE_SANDBOX)

# -- Celery (example_project/celery.py reads every CELERY_* setting) ----------------------

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://localhost//"
CELERY_TASK_TIME_LIMIT = 120
CELERY_BEAT_SCHEDULE = {
    "slice-connect-renew": {
        "task": "slice_connect.renew_due_credentials",
        "schedule": RENEW_EVERY,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DEMO_DIR / "celerybeat-schedule")
if CELERY_BROKER_URL.startswith("filesystem:"):
    # Messages are files in one folder, shared by beat, the worker and anything sending.
    BROKER_DIR = DEMO_DIR / "broker"
    (BROKER_DIR / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(BROKER_DIR),
        "data_folder_out": str(BROKER_DIR),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # Above the task time limit plus the largest countdown and retry delay (README).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s] %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "slice_connect": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
