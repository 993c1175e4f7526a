"""A job's owner is checked once a statement by triggers, not once a row by a foreign key.

A foreign key runs a query of its own for each inserted row, at COMMIT: a thousand for a
1,000-job batch, on the critical path of the request. The triggers keep the key's guarantees with
one query a statement:

- An insert (one row or a COPY) whose owner is no user fails with a foreign key violation, and
  the owners it names are locked FOR KEY SHARE, as the key's check locks them: a user cannot be
  deleted until the transaction that gave them jobs ends.
- An update that gives a job another owner is checked and locks the same way.
- Deleting a user disowns their jobs (owner NULL), the model's ``on_delete=SET_NULL``: Django's
  deletion does it first, and the trigger covers a delete outside the ORM or a job committed by
  an enqueue the delete had to wait for.
"""

from django.conf import settings
from django.db import migrations, models
import django.db.models.deletion


def _names(apps, schema_editor) -> dict[str, str]:
    job = apps.get_model("tasks", "Job")
    user = apps.get_model(settings.AUTH_USER_MODEL)
    quote = schema_editor.quote_name
    return {
        "jobs": quote(job._meta.db_table),
        "owner": quote(job._meta.get_field("owner").column),
        "users": quote(user._meta.db_table),
        "user_id": quote(user._meta.pk.column),
    }


POSTGRESQL = """
CREATE FUNCTION job_owners_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owners bigint;
    locked bigint;
    missing text;
BEGIN
    SELECT count(DISTINCT {owner}) INTO owners FROM new_jobs;
    WITH found AS (
        SELECT FROM {users} WHERE {user_id} IN (SELECT {owner} FROM new_jobs) FOR KEY SHARE
    ) SELECT count(*) INTO locked FROM found;
    IF locked < owners THEN
        SELECT j.{owner}::text INTO missing FROM new_jobs j
        WHERE NOT EXISTS (SELECT FROM {users} u WHERE u.{user_id} = j.{owner}) LIMIT 1;
        RAISE foreign_key_violation USING MESSAGE = format('job owner %s is not a user', missing);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_owners_exist AFTER INSERT ON {jobs}
    REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION job_owners_exist();

CREATE FUNCTION job_new_owner_exists() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM {users} WHERE {user_id} = NEW.{owner} FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE foreign_key_violation USING MESSAGE = format('job owner %s is not a user', NEW.{owner});
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_new_owner_exists AFTER UPDATE OF {owner} ON {jobs} FOR EACH ROW
    WHEN (NEW.{owner} IS NOT NULL AND NEW.{owner} IS DISTINCT FROM OLD.{owner})
    EXECUTE FUNCTION job_new_owner_exists();

CREATE FUNCTION user_jobs_disowned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {jobs} SET {owner} = NULL WHERE {owner} = OLD.{user_id};
    RETURN NULL;
END $$;
CREATE TRIGGER user_jobs_disowned AFTER DELETE ON {users} FOR EACH ROW EXECUTE FUNCTION user_jobs_disowned();
"""

POSTGRESQL_REVERSE = """
DROP TRIGGER job_owners_exist ON {jobs};
DROP TRIGGER job_new_owner_exists ON {jobs};
DROP TRIGGER user_jobs_disowned ON {users};
DROP FUNCTION job_owners_exist(), job_new_owner_exists(), user_jobs_disowned();
"""

# SQLite checks each row in the process, where a query is cheap; it has one writer at a time. A later
# migration that makes SQLite rebuild the table (most field changes) drops these: it must run them again.
SQLITE = [
    """CREATE TRIGGER job_owners_exist BEFORE INSERT ON {jobs} FOR EACH ROW
    WHEN NEW.{owner} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {users} WHERE {user_id} = NEW.{owner})
    BEGIN SELECT RAISE(ABORT, 'job owner is not a user'); END""",
    """CREATE TRIGGER job_new_owner_exists BEFORE UPDATE OF {owner} ON {jobs} FOR EACH ROW
    WHEN NEW.{owner} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {users} WHERE {user_id} = NEW.{owner})
    BEGIN SELECT RAISE(ABORT, 'job owner is not a user'); END""",
    """CREATE TRIGGER user_jobs_disowned AFTER DELETE ON {users} FOR EACH ROW
    BEGIN UPDATE {jobs} SET {owner} = NULL WHERE {owner} = OLD.{user_id}; END""",
]

SQLITE_REVERSE = [
    "DROP TRIGGER job_owners_exist",
    "DROP TRIGGER job_new_owner_exists",
    "DROP TRIGGER user_jobs_disowned",
]


def _run(statements_by_vendor: dict[str, str | list[str]]):
    def run(apps, schema_editor) -> None:
        statements = statements_by_vendor[schema_editor.connection.vendor]
        names = _names(apps, schema_editor)
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement.format(**names), params=None)

    return run


class Migration(migrations.Migration):

    dependencies = [
        ('tasks', '0010_publish_leases'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # On SQLite, altering the field rebuilds the table, which drops its triggers: they come after.
        # On PostgreSQL both run in the migration's transaction.
        migrations.AlterField(
            model_name='job',
            name='owner',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='jobs', to=settings.AUTH_USER_MODEL, verbose_name='owner'),
        ),
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRESQL_REVERSE, "sqlite": SQLITE_REVERSE}),
        ),
    ]
