"""The three statements of a renewal, written once per database instead of on every call.

A renewal should cost little more than its round trip to Slice. Built through the ORM
on every call, its stamp, its locking read and its save cost more client CPU than the
token request itself (the query compiler runs each time); here each statement's SQL is
built once per database connection settings (quoted names from the model's metadata) and
its values are prepared and converted by the model's own fields, as the ORM would do. So
encryption, time zones and every backend's conversions stay the fields' business.

Only :mod:`slice_connect.services` calls these, inside its renewal protocol (see
``services.Journal``).
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Field

from .conf import app_settings
from .models import SliceCredential

USING = DEFAULT_DB_ALIAS

_meta = SliceCredential._meta
_FIELDS: list[Field[Any, Any]] = list(_meta.concrete_fields)
_FIELD = {field.name: field for field in _FIELDS}
_COLUMN = {field.name: field.column for field in _FIELDS if field.column}
_TABLE = _meta.db_table
#: ``set_config`` with ``is_local`` in a WHERE clause: PostgreSQL evaluates it as it reads
#: each row, before it locks the row (or waits for it), so the wait is bounded by
#: ``LOCK_TIMEOUT`` without a statement of its own, and only in this transaction.
_LOCK_TIMEOUT_SQL = "set_config('lock_timeout', %s, true) IS NOT NULL"
#: The same way, the stamp's commit does not wait for the WAL flush (see :func:`stamp`).
_NO_FLUSH_WAIT_SQL = "set_config('synchronous_commit', 'off', true) IS NOT NULL"


def _q(name: str) -> str:
    return str(connections[USING].ops.quote_name(name))


def _column(name: str) -> str:
    return _q(_COLUMN[name])


def _prep(connection: Any, name: str, value: Any) -> Any:
    """``value`` as the field ``name`` sends it to the database in a WHERE clause."""
    return _FIELD[name].get_db_prep_value(value, connection, prepared=False)


def _lock_timeout(connection: Any) -> list[str]:
    if connection.vendor != "postgresql":
        return []
    return [f"{int(app_settings.LOCK_TIMEOUT.total_seconds() * 1000)}ms"]


@cache
def _stamp_sql(vendor: str, condition: str) -> str:
    conditions = {
        "version": f" AND {_column('version')} = %s",
        "due": (
            f" AND ({_column('access_token_expires_at')} <= %s"
            f" OR {_column('refresh_token_expires_at')} <= %s)"
        ),
        "force": "",
    }
    postgresql = f" AND {_NO_FLUSH_WAIT_SQL} AND {_LOCK_TIMEOUT_SQL}"
    lock = postgresql if vendor == "postgresql" else ""
    # Only names from the model's metadata are formatted in; every value is a parameter.
    return (
        f"UPDATE {_q(_TABLE)} SET {_column('renewal_started_at')} = %s"  # noqa: S608
        f" WHERE {_column('id')} = %s AND {_column('status')} = %s"
        f" AND {_column('renewal_started_at')} IS NULL{conditions[condition]}{lock}"
    )


def stamp(pk: int, now: datetime, *, version: int | None, due: bool) -> bool:
    """Set ``renewal_started_at = now`` if the row holds no stamp and is active; say if set.

    With ``version``, only if the row still holds that version; with ``due``, only if one
    of its tokens expires soon (the access token within ``ACCESS_TOKEN_LEEWAY``, the refresh
    token within ``RENEW_WITHIN``). One statement, not read back.

    On PostgreSQL its commit does not wait for the write-ahead log to reach the disk
    (``synchronous_commit = off`` for this statement only): the stamp is visible to every
    other connection at once and survives this process dying, which is what it is for; only
    a crash of the database server itself within a fraction of a second can lose it, and a
    lost stamp changes nothing but how a refusal of that refresh token is labelled
    (``invalid_grant`` instead of ``lost_rotation``). The new tokens are always saved with
    a flushed commit.
    """
    connection = connections[USING]
    params: list[Any] = [
        _prep(connection, "renewal_started_at", now),
        pk,
        SliceCredential.Status.ACTIVE.value,
    ]
    if version is not None:
        condition = "version"
        params.append(version)
    elif due:
        condition = "due"
        params += [
            _prep(connection, "access_token_expires_at", now + app_settings.ACCESS_TOKEN_LEEWAY),
            _prep(connection, "refresh_token_expires_at", now + app_settings.RENEW_WITHIN),
        ]
    else:
        condition = "force"
    params += _lock_timeout(connection)
    with connection.cursor() as cursor:
        cursor.execute(_stamp_sql(connection.vendor, condition), params)
        return bool(cursor.rowcount)


@cache
def _lock_sql(vendor: str, for_update: bool) -> str:
    columns = ", ".join(_column(field.name) for field in _FIELDS)
    lock = f" AND {_LOCK_TIMEOUT_SQL}" if vendor == "postgresql" else ""
    return (
        f"SELECT {columns} FROM {_q(_TABLE)} WHERE {_column('id')} = %s"  # noqa: S608
        f"{lock}{' FOR UPDATE' if for_update else ''}"
    )


def _converters(connection: Any) -> list[tuple[Any, list[Any]]]:
    """Per column, its expression and the converters the ORM would apply to its value."""
    found = []
    for field in _FIELDS:
        column = field.get_col(_TABLE)
        found.append(
            (
                column,
                [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)],
            )
        )
    return found


_converter_cache: dict[tuple[str, str], list[tuple[Any, list[Any]]]] = {}


def lock(pk: int) -> SliceCredential:
    """Read the row and lock it until the transaction ends (``SELECT ... FOR UPDATE``).

    Raises ``SliceCredential.DoesNotExist`` when there is no such row. Call it inside a
    transaction; a held lock is waited for ``LOCK_TIMEOUT`` at most on PostgreSQL.
    """
    connection = connections[USING]
    sql = _lock_sql(connection.vendor, connection.features.has_select_for_update)
    with connection.cursor() as cursor:
        cursor.execute(sql, [pk, *_lock_timeout(connection)])
        row = cursor.fetchone()
    if row is None:
        raise SliceCredential.DoesNotExist(f"SliceCredential {pk} does not exist.")
    key = (USING, connection.vendor)
    converters = _converter_cache.get(key)
    if converters is None:
        converters = _converter_cache[key] = _converters(connection)
    values = []
    for value, (column, functions) in zip(row, converters, strict=True):
        for convert in functions:
            value = convert(value, column, connection)
        values.append(value)
    return SliceCredential.from_db(USING, [field.attname for field in _FIELDS], values)


@cache
def _update_sql(vendor: str, names: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{_column(name)} = %s" for name in names)
    return f"UPDATE {_q(_TABLE)} SET {assignments} WHERE {_column('id')} = %s"  # noqa: S608


def save(row: SliceCredential, names: list[str]) -> None:
    """Write the fields ``names`` of ``row`` (``save(update_fields=names)``, without signals).

    Each value is prepared by its field as the ORM would (``pre_save``, then
    ``get_db_prep_save``: encrypted tokens, ``auto_now`` dates); nothing is sent for
    ``pre_save``/``post_save``: a renewal announces itself with ``credential_renewed``.
    """
    connection = connections[USING]
    params = [
        _FIELD[name].get_db_prep_save(_FIELD[name].pre_save(row, False), connection)
        for name in names
    ]
    with connection.cursor() as cursor:
        cursor.execute(_update_sql(connection.vendor, tuple(names)), [*params, row.pk])
