"""One publish mechanism, and the job owner's foreign key back.

- A job to run now is written pending with its publisher's claim (``publishing_since``); the
  publish marks it queued, and the relay publishes any whose claim is free or expired. Publish
  leases are gone: the queued jobs of a lease still held (its publisher may have died before the
  publish) go back to pending for the relay, which publishes them again (at least once).
- The owner is a foreign key again, checked by the database as any other; the triggers of 0011
  that stood in for it are dropped first (on SQLite, altering the field rebuilds the table).
"""

import importlib
import uuid

from django.conf import settings
from django.db import migrations, models
import django.db.models.deletion

_TRIGGERS = importlib.import_module("tasks.migrations.0011_job_owner_checked_a_statement")

DROP_TRIGGERS = {
    "postgresql": _TRIGGERS.POSTGRESQL_REVERSE,
    "sqlite": _TRIGGERS.SQLITE_REVERSE,
}
CREATE_TRIGGERS = {
    "postgresql": _TRIGGERS.POSTGRESQL,
    "sqlite": _TRIGGERS.SQLITE,
}


def leased_jobs_to_the_relay(apps, schema_editor) -> None:
    PublishLease = apps.get_model("tasks", "PublishLease")
    Job = apps.get_model("tasks", "Job")
    for lease in PublishLease.objects.all().iterator():
        packed = bytes(lease.jobs)
        ids = [uuid.UUID(bytes=packed[start : start + 16]) for start in range(0, len(packed), 16)]
        Job.objects.filter(pk__in=ids, state="queued").update(state="pending", queued_at=None, publishing_since=None)


class Migration(migrations.Migration):

    dependencies = [
        ("tasks", "0014_retention_schedule_prunes_finished_jobs"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(leased_jobs_to_the_relay, migrations.RunPython.noop),
        migrations.DeleteModel(name="PublishLease"),
        migrations.RunPython(_TRIGGERS._run(DROP_TRIGGERS), _TRIGGERS._run(CREATE_TRIGGERS)),
        migrations.AlterField(
            model_name="job",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="jobs",
                to=settings.AUTH_USER_MODEL,
                verbose_name="owner",
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="publishing_since",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When the process publishing this pending job claimed it (an enqueue, a retry, the relay): "
                "another publisher leaves it alone until the claim expires.",
                null=True,
                verbose_name="publishing since",
            ),
        ),
    ]
