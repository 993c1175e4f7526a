# Written for the metric history only (JobMetric); other models' changes go in their own migrations.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0019_flow_key_last_start"),
    ]

    operations = [
        migrations.CreateModel(
            name="JobMetric",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("period", models.CharField(choices=[("minute", "Minute"), ("hour", "Hour")], max_length=8)),
                ("start", models.DateTimeField(help_text="When the period began.")),
                ("queue", models.CharField(max_length=32)),
                ("task_name", models.CharField(max_length=200, verbose_name="task")),
                ("enqueued", models.PositiveBigIntegerField(default=0)),
                ("started", models.PositiveBigIntegerField(default=0)),
                ("succeeded", models.PositiveBigIntegerField(default=0)),
                (
                    "failed",
                    models.PositiveBigIntegerField(
                        default=0, help_text="Runs that failed (the job failed or retries)."
                    ),
                ),
                ("dead", models.PositiveBigIntegerField(default=0)),
                ("wait", models.JSONField(default=list, help_text="Enqueue to start: jobs per histogram bucket.")),
                ("run", models.JSONField(default=list, help_text="Start to end of a run: runs per histogram bucket.")),
                ("wait_us", models.PositiveBigIntegerField(default=0, help_text="Sum of the waits, in microseconds.")),
                (
                    "run_us",
                    models.PositiveBigIntegerField(default=0, help_text="Sum of the run times, in microseconds."),
                ),
            ],
            options={
                "verbose_name": "job metric",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("period", "start", "queue", "task_name"), name="job_metric_period_unique"
                    )
                ],
            },
        ),
    ]
