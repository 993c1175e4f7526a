"""The outbox is a table of its own: a job to run now is written queued with a row in
``JobOutbox``, which its publisher deletes once the message is out. Sending a message then costs
the deletion of a small row instead of a rewrite of the job's row (and every index on it), and
``publishing_since`` goes. Jobs still pending (their publish owed) get outbox rows with their
publisher's claim; on the way back, jobs with an outbox row are pending again with that claim.
"""

import django.db.models.deletion
from django.db import migrations, models

STATE_CHOICES = [
    ("waiting", "Waiting (for an earlier step of its workflow)"),
    ("pending", "Pending (its publish failed; the relay sends it)"),
    ("scheduled", "Scheduled (delayed)"),
    ("queued", "Queued"),
    ("started", "Started"),
    ("retrying", "Retrying"),
    ("succeeded", "Succeeded"),
    ("failed", "Failed"),
    ("dead", "Dead (gave up)"),
    ("cancelled", "Cancelled"),
]


def pending_jobs_to_the_outbox(apps, schema_editor) -> None:
    Job = apps.get_model("tasks", "Job")
    JobOutbox = apps.get_model("tasks", "JobOutbox")
    pending = Job.objects.filter(state="pending").values_list("pk", "publishing_since")
    JobOutbox.objects.bulk_create(
        (JobOutbox(job_id=pk, claimed_at=claimed_at) for pk, claimed_at in pending.iterator()), batch_size=1000
    )


def owed_jobs_back_to_pending(apps, schema_editor) -> None:
    Job = apps.get_model("tasks", "Job")
    JobOutbox = apps.get_model("tasks", "JobOutbox")
    for job_id, claimed_at in JobOutbox.objects.values_list("job_id", "claimed_at").iterator():
        Job.objects.filter(pk=job_id, state__in=["pending", "queued"]).update(
            state="pending", queued_at=None, publishing_since=claimed_at
        )


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0015_one_publish_mechanism_and_owner_key"),
    ]

    operations = [
        migrations.CreateModel(
            name="JobOutbox",
            fields=[
                (
                    "job",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="outbox",
                        serialize=False,
                        to="tasks.job",
                        verbose_name="job",
                    ),
                ),
                (
                    "claimed_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="When a publisher (an enqueue, a retry, the relay) took it: another leaves it alone "
                        "until the claim expires. Empty: its publish failed, the relay sends it.",
                        null=True,
                        verbose_name="claimed at",
                    ),
                ),
            ],
            options={"verbose_name": "owed message"},
        ),
        migrations.RunPython(pending_jobs_to_the_outbox, owed_jobs_back_to_pending),
        migrations.RemoveField(model_name="job", name="publishing_since"),
        migrations.AlterField(
            model_name="job",
            name="state",
            field=models.CharField(choices=STATE_CHOICES, default="pending", max_length=16, verbose_name="state"),
        ),
        migrations.AlterField(
            model_name="jobaction",
            name="from_state",
            field=models.CharField(choices=STATE_CHOICES, max_length=16, verbose_name="from state"),
        ),
    ]
