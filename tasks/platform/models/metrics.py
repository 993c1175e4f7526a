"""The metric history: what each queue and task did per minute (kept 72 hours) and per hour (kept
30 days). The relay writes it from the counts workers and enqueuers keep in Redis
(tasks.platform.metric_counts, tasks.platform.services.metric_history); nothing else does, and no
job writes a row of its own. Storage is bounded: one row per period and (queue, task) pair active in it.
"""

from django.db import models


class MetricPeriod(models.TextChoices):
    MINUTE = "minute", "Minute"
    HOUR = "hour", "Hour"


class JobMetric(models.Model):
    """One queue's and task's counts over one period, and its durations as histograms (counts per
    bucket of tasks.platform.histogram, which add up across periods)."""

    period = models.CharField(max_length=8, choices=MetricPeriod.choices)
    start = models.DateTimeField(help_text="When the period began.")
    queue = models.CharField(max_length=32)
    task_name = models.CharField("task", max_length=200)
    enqueued = models.PositiveBigIntegerField(default=0)
    started = models.PositiveBigIntegerField(default=0)
    succeeded = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0, help_text="Runs that failed (the job failed or retries).")
    dead = models.PositiveBigIntegerField(default=0)
    wait = models.JSONField(default=list, help_text="Enqueue to start: jobs per histogram bucket.")
    run = models.JSONField(default=list, help_text="Start to end of a run: runs per histogram bucket.")
    wait_us = models.PositiveBigIntegerField(default=0, help_text="Sum of the waits, in microseconds.")
    run_us = models.PositiveBigIntegerField(default=0, help_text="Sum of the run times, in microseconds.")

    class Meta:
        verbose_name = "job metric"
        constraints = [
            models.UniqueConstraint(fields=["period", "start", "queue", "task_name"], name="job_metric_period_unique")
        ]

    def __str__(self) -> str:
        return f"{self.queue} {self.task_name} {self.period} {self.start:%Y-%m-%d %H:%M}"
