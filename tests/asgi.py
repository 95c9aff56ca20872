"""The test site as an ASGI application, for uvicorn in a subprocess (test_async_live)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.worker_settings")

application = get_asgi_application()
