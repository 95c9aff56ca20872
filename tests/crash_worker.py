"""The Celery app of the crash drills (battery B8): the example app plus one SIGKILL.

Rule and battery numbers are those of docs/threat-model.rst.

``celery -A tests.crash_worker worker`` runs ``example_project.celery.app`` unchanged, with a
kill point chosen by the environment; nothing in slice_connect is touched:

* ``SLICE_CONNECT_TEST_KILL_AT``:

  - ``before_post`` / ``after_post``: around ``slice_connect.oauth.post_token_request`` in the
    pool process (after: Slice has answered and rotated, nothing is committed yet);
  - ``after_commit``: ``task_postrun`` in the pool process; the task returned, so its
    transactions are committed, but its result has not reached the parent: with
    ``acks_late`` the message is not acked;
  - ``after_ack``: right after the worker's main process acked the message at the broker
    (``kombu.message.Message.ack``).

* ``SLICE_CONNECT_TEST_KILL_SCOPE``: ``process`` kills the pool process only (the main
  process sees ``WorkerLostError`` and, with ``reject_on_worker_lost``, requeues the message
  at once); ``worker`` kills the whole process group (the worker runs in a session of its
  own), so nothing is acked or requeued: the message waits in Redis's unacked set.
* ``SLICE_CONNECT_TEST_KILL_MARKER``: a file the kill creates (``O_EXCL``) first; only one
  kill ever happens, so the redelivered message runs normally.

:class:`DrillWorker` starts such a worker (it is :class:`tests.workers.CeleryWorker` with
this module as the app).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from example_project.celery import app

from .workers import CeleryWorker

__all__ = ["DrillWorker", "app"]

KILL_AT = os.environ.get("SLICE_CONNECT_TEST_KILL_AT", "")
KILL_SCOPE = os.environ.get("SLICE_CONNECT_TEST_KILL_SCOPE", "process")
KILL_MARKER = os.environ.get("SLICE_CONNECT_TEST_KILL_MARKER", "")
POINTS = ("before_post", "after_post", "after_commit", "after_ack")
RENEW_ONE = "slice_connect.renew_credential"


def die(point: str) -> None:
    """SIGKILL this process (or its whole group) if ``point`` is the chosen one, once."""
    if point != KILL_AT or not KILL_MARKER:
        return
    try:
        fd = os.open(KILL_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # the one kill already happened: this is the redelivery
    os.write(fd, f"{point} {os.getpid()}\n".encode())
    os.close(fd)
    sys.stderr.flush()
    if KILL_SCOPE == "worker":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def _install_in_pool_process(**_kwargs: Any) -> None:
    from slice_connect import oauth

    real = oauth.post_token_request

    def post_token_request(*args: Any, **kwargs: Any) -> Any:
        die("before_post")
        result = real(*args, **kwargs)
        die("after_post")
        return result

    oauth.post_token_request = post_token_request  # type: ignore[assignment]


def _after_task(sender: Any = None, **_kwargs: Any) -> None:
    if getattr(sender, "name", None) == RENEW_ONE:
        die("after_commit")


def _install_in_main_process() -> None:
    # Not Request.acknowledge: with the prefork event loop that only schedules the ack.
    from kombu.message import Message

    real = Message.ack

    def ack(self: Message, multiple: bool = False) -> None:
        real(self, multiple=multiple)
        if (self.headers or {}).get("task") == RENEW_ONE:
            die("after_ack")

    Message.ack = ack  # type: ignore[method-assign]


if KILL_AT:
    if KILL_AT not in POINTS:
        raise RuntimeError(f"SLICE_CONNECT_TEST_KILL_AT must be one of {POINTS}")
    from celery.signals import task_postrun, worker_process_init

    worker_process_init.connect(_install_in_pool_process, weak=False)
    task_postrun.connect(_after_task, weak=False)
    _install_in_main_process()


@dataclass
class DrillWorker(CeleryWorker):
    """A real prefork worker running this module's app (``-A tests.crash_worker``)."""

    app_module: str = "tests.crash_worker"
    node_prefix: str = "slice-connect-drill"

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None
