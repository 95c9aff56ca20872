#!/usr/bin/env python
"""Django's command line for the example project: ``python example_project/manage.py demo``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    # Python puts this script's folder first on sys.path, where example_project/celery.py
    # would shadow the celery package. Put the repository root there instead.
    if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "example_project":
        sys.path[0] = str(ROOT)
    elif str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
