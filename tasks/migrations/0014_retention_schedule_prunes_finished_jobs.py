"""The retention task is now jobs.prune_finished (failed, dead and cancelled jobs too, after
JOB_FAILED_RETENTION_DAYS): point existing schedules of jobs.prune_succeeded at it, and give the
seeded one its new name, keeping its timing, enabled flag and queue as an admin left them.

Seeding only ever creates schedules and finds them by name, so without this an existing database
would keep a schedule of a task no worker knows, next to a second, newly seeded one.
"""

from django.db import migrations
from django.utils import timezone

OLD_TASK, NEW_TASK = "jobs.prune_succeeded", "jobs.prune_finished"
OLD_NAME = "Prune succeeded jobs (JOB_RETENTION_DAYS)"
NEW_NAME = "Prune finished jobs (JOB_RETENTION_DAYS, JOB_FAILED_RETENTION_DAYS)"
OLD_DESCRIPTION = "Deletes succeeded jobs older than JOB_RETENTION_DAYS from the job ledger."
NEW_DESCRIPTION = (
    "Every day at 03:17 UTC: deletes from the job ledger succeeded jobs finished more than "
    "JOB_RETENTION_DAYS ago, and failed, dead and cancelled ones past JOB_FAILED_RETENTION_DAYS, in "
    "chunks. The jobs of an order's workflow stay while their order exists."
)
#: a schedule's runs carry origin beat:<name> (beat) or beat:<name>:run-now (admin's Run now)
ORIGIN_SUFFIXES = ("", ":run-now")


def repoint(apps, *, task_from, task_to, name_from, name_to, description_from, description_to) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    Job = apps.get_model("tasks", "Job")

    changed = PeriodicTask.objects.filter(task=task_from).update(task=task_to)
    if not PeriodicTask.objects.filter(name=name_to).exists():
        seeded = PeriodicTask.objects.filter(name=name_from)
        seeded.filter(description=description_from).update(description=description_to)  # unless an admin wrote one
        if seeded.update(name=name_to):
            changed += 1
            # The schedule's past runs stay listed under it.
            for suffix in ORIGIN_SUFFIXES:
                Job.objects.filter(origin=f"beat:{name_from}{suffix}").update(origin=f"beat:{name_to}{suffix}")
    if changed:
        # What django-celery-beat's signals do on a save: a running beat reloads its schedules.
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def forwards(apps, schema_editor):
    repoint(
        apps,
        task_from=OLD_TASK,
        task_to=NEW_TASK,
        name_from=OLD_NAME,
        name_to=NEW_NAME,
        description_from=OLD_DESCRIPTION,
        description_to=NEW_DESCRIPTION,
    )


def backwards(apps, schema_editor):
    repoint(
        apps,
        task_from=NEW_TASK,
        task_to=OLD_TASK,
        name_from=NEW_NAME,
        name_to=OLD_NAME,
        description_from=NEW_DESCRIPTION,
        description_to=OLD_DESCRIPTION,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0013_enqueue_limits_and_owner_scoped_keys"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
