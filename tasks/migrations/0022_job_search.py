"""The job search's indexes (tasks.platform.selectors.search), PostgreSQL only.

- ``job_payload_contains``: GIN with ``jsonb_path_ops`` on the payload, for containment
  (``payload @> '{"order_id": 42}'``): the smaller and faster of the two JSONB operator classes, and
  containment is the only payload operator the search uses.
- ``job_error_trigram``: GIN with ``gin_trgm_ops`` (the ``pg_trgm`` extension) on ``UPPER(error)``,
  the expression Django's ``icontains`` compares on PostgreSQL, so a substring search of the error
  text is an index scan rather than a read of every row.

Both are built ``CONCURRENTLY`` (so the migration is not atomic): on a large ledger a plain build
would block every enqueue and state change until it ends. They are not in ``Job.Meta.indexes``:
SQLite cannot hold them, and SQLite rebuilds a table from the model's declared indexes whenever a
later migration alters it. On SQLite this migration does nothing and the same filters scan the table.
"""

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations

INDEXES = {
    "job_payload_contains": "ON tasks_job USING gin (payload jsonb_path_ops)",
    "job_error_trigram": "ON tasks_job USING gin (UPPER(error) gin_trgm_ops)",
}


def create_indexes(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, definition in INDEXES.items():
        # IF NOT EXISTS: a build that was interrupted leaves an invalid index behind; the reverse
        # drops it, and this migration can then run again.
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}", params=None)


def drop_indexes(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}", params=None)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("tasks", "0021_alerts"),
    ]

    operations = [
        # Skipped on SQLite by the operation itself. Creating an extension needs a superuser or the
        # database's owner (pg_trgm is a trusted extension from PostgreSQL 13 on).
        TrigramExtension(),
        migrations.RunPython(create_indexes, drop_indexes, elidable=False),
    ]
