"""The repository's only Celery app (the demo's, reused by the test suite's worker tests).

``DJANGO_SETTINGS_MODULE`` picks the settings; every ``CELERY_*`` setting configures it.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
