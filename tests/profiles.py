"""Quick and long test profiles.

The default run (``tox``, ``python -m pytest``) uses the *quick* profile: the simulated
drills run on smaller populations and the property tests on fewer examples, so the whole
suite stays within a few minutes on a small machine. ``SLICE_CONNECT_TEST_PROFILE=long``
(what ``.ci/run`` sets for its long run) restores the full sizes: 1,000 credentials in the
outage battery, 1,000 Hypothesis examples per fuzz test, 100 state-machine runs, and so
on. Both profiles run the same tests and the same assertions; only sizes change (and
``test_startup`` tries each fatal configuration under one server kind instead of both).

Hypothesis profiles follow: ``ci`` (long) and ``dev`` (quick), unless
``HYPOTHESIS_PROFILE`` names one explicitly.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

PROFILES = ("quick", "long")


def _profile() -> str:
    value = os.environ.get("SLICE_CONNECT_TEST_PROFILE", "").strip().lower() or "quick"
    if value not in PROFILES:
        raise RuntimeError(
            f"SLICE_CONNECT_TEST_PROFILE={value!r} is not a test profile; "
            f"use one of: {', '.join(PROFILES)}"
        )
    return value


PROFILE = _profile()
LONG = PROFILE == "long"

#: The Hypothesis profile loaded by ``tests/conftest.py``.
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if LONG else "dev")


def pick(quick: T, long: T) -> T:
    """``long`` under the long profile, ``quick`` otherwise."""
    return long if LONG else quick
