"""Work that must commit on its own, whatever transaction the caller is in.

A renewal spends a refresh token at Slice: its outcome (the new tokens, or the journal
stamp) must be committed even if the caller's transaction rolls back afterwards, as it
does for a view under ``ATOMIC_REQUESTS`` that raises after calling the API. The same holds
for the callback's single-use claim on its state. :func:`run_durably` runs such work
directly when the caller has no transaction of its own open, and otherwise on a database
connection of its own (a short-lived thread, whose connection is closed afterwards), so
the work commits independently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.views.decorators.debug import sensitive_variables

T = TypeVar("T")

#: Name of the helper threads, so they can be told apart in logs and thread dumps.
THREAD_NAME = "slice-connect-own-transaction"


def in_callers_transaction(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the current thread has a transaction open on ``using`` that work would join.

    A test case's transaction (Django marks the atomic blocks of ``TestCase`` with
    ``_from_testcase``, as ``atomic(durable=True)`` also checks) does not count: its rows
    exist only inside it, so a second connection could not see them, and it is rolled back
    at the end of the test whatever happens.
    """
    conn = connections[using]
    if any(getattr(block, "_from_testcase", False) for block in conn.atomic_blocks):
        return False
    if conn.in_atomic_block:
        return True
    # set_autocommit(False) without atomic(): a transaction is open all the same.
    return conn.connection is not None and not conn.get_autocommit()


def own_connection_possible(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether a second connection can write while the caller's transaction is open.

    SQLite allows one writer at a time: with ``transaction_mode: IMMEDIATE`` (which the
    docs ask for) a transaction holds the write lock from its first statement, so a
    second connection waiting for that lock while the first waits for it would only end
    with "database is locked" after the busy timeout.
    """
    return connections[using].vendor != "sqlite"


@sensitive_variables()  # the result (a credential with its tokens) passes through here
def run_on_own_connection(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``func(*args, **kwargs)`` in a helper thread with its own database connections.

    The caller waits for it. The helper's connections are closed before this returns; the
    result is returned, or the exception raised by ``func`` is raised again here.
    """
    outcome: dict[str, Any] = {}

    @sensitive_variables()
    def target() -> None:
        try:
            outcome["result"] = func(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(target=target, name=THREAD_NAME)
    thread.start()
    thread.join()
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error
    return outcome["result"]  # type: ignore[no-any-return]


def run_durably(
    func: Callable[..., T],
    *args: Any,
    refuse_on_sqlite: Callable[[], Exception] | None = None,
    using: str = DEFAULT_DB_ALIAS,
    **kwargs: Any,
) -> T:
    """Run ``func`` so that what it commits stays committed whatever the caller does next.

    Outside a transaction of the caller (or inside a test case's), ``func`` runs directly.
    Inside one, it runs on its own connection. Where that is impossible (SQLite), it raises
    ``refuse_on_sqlite()`` before ``func`` starts, or without ``refuse_on_sqlite`` runs
    ``func`` in the caller's transaction (for work whose rollback with the caller is safe).
    """
    if not in_callers_transaction(using):
        return func(*args, **kwargs)
    if own_connection_possible(using):
        return run_on_own_connection(func, *args, **kwargs)
    if refuse_on_sqlite is not None:
        raise refuse_on_sqlite()
    return func(*args, **kwargs)
