"""Settings for the suite's subprocesses: a real Celery worker and renewal scripts.

They are :mod:`tests.settings` plus two things only the parent pytest process knows, passed
in the environment by :func:`tests.workers.subprocess_env`:

* ``SLICE_CONNECT_TEST_DATABASE``: JSON of the ``DATABASES["default"]`` entry the parent is
  using, i.e. pointing at the test database pytest-django created (``test_...``), so the
  subprocess shares rows and row locks with the test;
* ``SLICE_CONNECT_TEST_SLICE_CONNECT``: JSON of the ``SLICE_CONNECT`` dict, i.e. the live
  server's sandbox URLs, the client registered for the running test and any renewal knobs
  (``RENEW_SPREAD``, ``RENEW_RATE_LIMIT``, ...);
* ``SLICE_CONNECT_TEST_FERNET_KEYS`` (optional): JSON of the process's ``FERNET_KEYS``, for a
  process started with other keys than the test's;
* ``SLICE_CONNECT_TEST_ROOT_URLCONF`` (optional): another URLconf (the ASGI site of
  ``tests/test_async_live.py``);
* ``SLICE_CONNECT_TEST_CELERY_QUEUE``: the queue of the running test. Test runs in parallel
  (tox environments, developers) share the Redis database, so each worker test publishes
  and consumes on a queue of its own (the sweep's renewals land there too).
"""

from __future__ import annotations

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, SLICE_CONNECT

if os.environ.get("SLICE_CONNECT_TEST_DATABASE"):
    DATABASES = {"default": json.loads(os.environ["SLICE_CONNECT_TEST_DATABASE"])}
if os.environ.get("SLICE_CONNECT_TEST_SLICE_CONNECT"):
    SLICE_CONNECT = json.loads(os.environ["SLICE_CONNECT_TEST_SLICE_CONNECT"])
if "SLICE_CONNECT_TEST_FERNET_KEYS" in os.environ:
    # A process started with other keys than the test's (a worker without the key).
    FERNET_KEYS = json.loads(os.environ["SLICE_CONNECT_TEST_FERNET_KEYS"])
if os.environ.get("SLICE_CONNECT_TEST_ROOT_URLCONF"):
    ROOT_URLCONF = os.environ["SLICE_CONNECT_TEST_ROOT_URLCONF"]
if os.environ.get("SLICE_CONNECT_TEST_CELERY_QUEUE"):
    CELERY_TASK_DEFAULT_QUEUE = os.environ["SLICE_CONNECT_TEST_CELERY_QUEUE"]
    # Nothing but this test's own messages reaches the worker (no broadcast commands).
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False

# Let the worker's own log lines through (tests.settings silences everything): the tests
# read "Task ... succeeded" lines and check that no token ever shows up in them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
