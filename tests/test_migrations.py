"""The shipped migrations match the models."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from slice_connect.models import SliceCredential


@pytest.mark.django_db
def test_no_missing_migrations() -> None:
    out = StringIO()
    # Exits with status 1 (SystemExit) when the models have changes without a migration.
    call_command("makemigrations", "--check", "--dry-run", "slice_connect", stdout=out)
    assert "No changes detected in app 'slice_connect'" in out.getvalue()


@pytest.mark.django_db
def test_migrations_are_applied_and_linear() -> None:
    loader = MigrationLoader(connection)
    ours = sorted(name for app, name in loader.disk_migrations if app == "slice_connect")
    assert ours and ours[0] == "0001_initial"
    leaves = loader.graph.leaf_nodes("slice_connect")
    assert len(leaves) == 1
    applied = {name for app, name in loader.applied_migrations if app == "slice_connect"}
    assert applied == set(ours)


@pytest.mark.django_db
def test_token_columns_are_binary() -> None:
    with connection.cursor() as cursor:
        description = connection.introspection.get_table_description(
            cursor, SliceCredential._meta.db_table
        )
    types = {
        column.name: connection.introspection.get_field_type(column.type_code, column)
        for column in description
    }
    assert types["access_token"] == "BinaryField"
    assert types["refresh_token"] == "BinaryField"
