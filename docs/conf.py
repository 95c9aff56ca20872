"""Sphinx configuration for django-slice-connect's documentation.

Build: ``tox -e docs`` (or ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
in an environment where the package is installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# autodoc imports the package, so Django needs settings: the smallest that load the app.
if not settings.configured:
    settings.configure(
        SECRET_KEY="docs-build-not-secret",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "slice_connect",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        FERNET_KEYS=["docs-build-key-not-secret-0123456789abcdefghijk"],
        SLICE_CONNECT={"CLIENT_ID": "docs", "CLIENT_SECRET": "docs"},
        USE_TZ=True,
    )
    django.setup()

from slice_connect import __version__  # noqa: E402

project = "django-slice-connect"
author = "django-slice-connect contributors"
copyright = "django-slice-connect contributors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_static_path: list[str] = []
html_theme = "alabaster"
html_theme_options = {
    "description": "Link Django users to Slice over OAuth 2.0 and keep the link alive.",
    "fixed_sidebar": True,
    "page_width": "1180px",
    "sidebar_width": "250px",
}
html_title = "django-slice-connect"
html_show_sourcelink = False
