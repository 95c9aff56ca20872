"""Settings for the start-up tests: :mod:`tests.worker_settings` plus overrides from the env.

``SLICE_CONNECT_TEST_OVERRIDES`` is JSON of top-level settings to replace (``DEBUG``,
``FERNET_KEYS``, ``SLICE_CONNECT``, ``SECRET_KEY``, ...); ``SLICE_CONNECT_TEST_UNSET`` is a
comma-separated list of settings to remove (``FERNET_KEYS``).
"""

from __future__ import annotations

import json
import os

from tests.worker_settings import *  # noqa: F403

globals().update(json.loads(os.environ.get("SLICE_CONNECT_TEST_OVERRIDES", "{}")))
for _name in filter(None, os.environ.get("SLICE_CONNECT_TEST_UNSET", "").split(",")):
    globals().pop(_name.strip(), None)
