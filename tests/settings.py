"""Settings for slice_connect's test suite.

SQLite in memory by default. ``DATABASE_URL=postgres://USER@HOST:PORT/NAME`` runs the same
suite on PostgreSQL (the locking tests need it). The Slice sandbox (django-oauth-toolkit)
is installed alongside, so live-server tests talk OAuth 2.0 to a real server.
"""

from __future__ import annotations

import os

from example_project.database_url import database_from_url
from example_project.slice_sandbox.conf import oauth2_provider_settings

# The sandbox runs on http://localhost; oauthlib refuses http URLs unless told otherwise.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

SECRET_KEY = "slice-connect-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "oauth2_provider",
    "example_project.slice_sandbox",
    "slice_connect",
    "corsheaders",
]

MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    # Off unless SLICE_SANDBOX["COMPRESS"] (or SLICE_CONNECT_TEST_COMPRESS) turns it on.
    "example_project.slice_sandbox.middleware.CompressAnswersMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

# The docs' cross-origin recipe for the JSON endpoints (docs/howto/single-page-apps.rst);
# no origin is allowed unless a test allows one (test_browser_cross_origin).
CORS_URLS_REGEX = r"^/slice/api/.*$"
CORS_ALLOWED_ORIGINS: list[str] = []

ROOT_URLCONF = "tests.urls"
LOGIN_URL = "/accounts/login/"
STATIC_URL = "/static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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


if os.environ.get("DATABASE_URL"):
    DATABASES = {
        "default": {
            **database_from_url(os.environ["DATABASE_URL"], "test"),
            # One test database per run, so parallel runs (tox envs, developers) never collide.
            "TEST": {"NAME": f"test_slice_connect_{os.getpid()}"},
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

FERNET_KEYS = ["slice-connect-test-key-1-not-a-real-secret"]

# Points at the sandbox; tests that use a live server override the URLs with its address.
SLICE_CONNECT = {
    "CLIENT_ID": "test-client-id",
    "CLIENT_SECRET": "test-client-secret",
    "AUTHORIZE_URL": "https://slice.test/oauth/authorize",
    "TOKEN_URL": "https://slice.test/oauth/token",
    "REVOKE_URL": "https://slice.test/oauth/revoke",
    "API_BASE_URL": "https://slice.test/api/v1/",
}

# SLICE_CONNECT_TEST_COMPRESS=gzip|deflate|django runs every live test against a sandbox
# that compresses its answers (as .ci/run does once).
SLICE_SANDBOX: dict[str, object] = {"COMPRESS": os.environ.get("SLICE_CONNECT_TEST_COMPRESS", "")}
OAUTH2_PROVIDER = oauth2_provider_settings(**SLICE_SANDBOX)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"], "level": "DEBUG"},
}

# Celery: the worker tests start a real worker on Redis; nothing here runs tasks eagerly.
CELERY_BROKER_URL = os.environ.get("SLICE_CONNECT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
