"""The job ledger: one row per job, from the request that asks for it to long after Redis forgot it."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone
from uuid_utils.compat import uuid7

from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName


class JobState(models.TextChoices):
    WAITING = "waiting", "Waiting (for an earlier step of its workflow)"
    PENDING = "pending", "Pending (its publish failed; the relay sends it)"
    HELD = "held", "Held (paused, at its concurrency limit, or waiting for its owner's fair share)"
    SCHEDULED = "scheduled", "Scheduled (delayed)"
    QUEUED = "queued", "Queued"
    STARTED = "started", "Started"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    DEAD = "dead", "Dead (gave up)"
    CANCELLED = "cancelled", "Cancelled"


#: states after which nothing more happens to a job
FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})
#: states of a job whose message is not out: pending (sent by the relay at once), scheduled and
#: retrying (sent when due)
UNPUBLISHED_STATES = (JobState.PENDING, JobState.SCHEDULED, JobState.RETRYING)
#: the start of the origin of every job a schedule fired or ran by hand (tasks.platform.selectors.schedules)
SCHEDULE_ORIGIN_PREFIX = "beat:"
#: states from which a job may be retried by hand
RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.DEAD, JobState.CANCELLED})
#: states from which a job may be retried with an edited payload: it ran and did not succeed (a
#: cancelled job never had its payload judged by a run)
EDITABLE_STATES = frozenset({JobState.FAILED, JobState.DEAD})
#: states of a job that holds a place in its owner's cap of active jobs (every one not finished)
ACTIVE_STATES = tuple(state for state in JobState if state not in FINISHED_STATES)
#: states of a job that holds one of its key's concurrency slots: admitted, not yet ended
SLOT_STATES = (JobState.PENDING, JobState.QUEUED, JobState.STARTED)
#: states of a job that takes one of its owner's places in a fair-share queue: sent, not yet started
IN_QUEUE_STATES = (JobState.PENDING, JobState.QUEUED)


class HeldReason(models.TextChoices):
    """Why a held job waits; the engine writes it with the state, and admits the job when it clears."""

    PAUSED = "paused", "Its queue or task is paused"
    CONCURRENCY = "concurrency", "Its key is at its concurrency limit"
    #: of a scheduled job: its start waits for its turn under its task's rate (no attempt is used)
    RATE = "rate", "Its turn under its task's rate"
    FAIR_SHARE = "fair_share", "Its owner has their share of its queue"


class Job(models.Model):
    State = JobState

    id = models.UUIDField(
        "id",
        primary_key=True,
        # Time-ordered (UUIDv7): a new row's id lands at the right edge of the primary key's index,
        # not on a random page of it.
        default=uuid7,
        editable=False,
        help_text="Also the Celery task id, so a message and its ledger row are one job.",
    )
    task_name = models.CharField("task", max_length=200)
    queue = models.CharField("queue", max_length=32, choices=QueueName.choices)
    priority = models.PositiveSmallIntegerField(
        "priority",
        default=PRIORITY_DEFAULT,
        help_text=f"{PRIORITY_HIGHEST} is the most urgent, {PRIORITY_LOWEST} the least.",
    )
    payload = models.JSONField("payload", default=dict, encoder=DjangoJSONEncoder, help_text="The task's arguments.")
    state = models.CharField("state", max_length=16, choices=JobState.choices, default=JobState.PENDING)
    attempts = models.PositiveIntegerField("attempts", default=0, help_text="How many times a worker started it.")
    max_attempts = models.PositiveSmallIntegerField(
        "max attempts", null=True, blank=True, help_text="Overrides the task's limit for this job."
    )
    attempts_before_retry = models.PositiveIntegerField(
        "attempts before the last manual retry",
        default=0,
        help_text="A manual retry gives the job a fresh budget: attempts beyond this count.",
    )
    held_reason = models.CharField(
        "held because",
        max_length=16,
        choices=HeldReason.choices,
        blank=True,
        help_text="Of a held job; of a scheduled one, rate: its turn under its task's rate.",
    )
    flow_key = models.CharField(
        "concurrency key",
        max_length=200,
        blank=True,
        help_text="Of a task with a concurrency limit or a rate: the payload value they count by (* for all).",
    )
    share_key = models.CharField(
        "fair share of",
        max_length=220,
        blank=True,
        help_text="On a fair-share queue: whose turn it takes (owner:<id>, or its task's declared "
        "payload key and value); blank elsewhere.",
    )
    progress = models.PositiveSmallIntegerField("progress (%)", default=0)
    progress_message = models.CharField("progress message", max_length=200, blank=True)
    result = models.JSONField("result", null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField("error", blank=True)
    traceback = models.TextField("traceback", blank=True)
    worker = models.CharField("worker", max_length=255, blank=True, help_text="Hostname of the worker that ran it.")
    origin = models.CharField(
        "origin",
        max_length=255,
        blank=True,
        help_text="Who asked for it: api, or beat:<schedule name>.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name="owner",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        db_index=False,  # job_owner_created serves owner lookups
    )
    idempotency_key = models.CharField(  # noqa: DJ001 - NULL (no key) stays out of the unique constraint
        "idempotency key",
        max_length=200,
        null=True,
        blank=True,
        help_text="A second enqueue of the same task with the same key by the same owner returns this job.",
    )
    run_at = models.DateTimeField("run at", null=True, blank=True, help_text="When a delayed job is due.")
    after = models.ForeignKey(
        "self",
        verbose_name="runs after",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="next_steps",
        db_index=False,  # job_after: workflow steps only
        help_text="A workflow step: it waits until this job succeeds, and is cancelled if it does not.",
    )
    then = models.ForeignKey(
        "self",
        verbose_name="group callback",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="group_members",
        db_index=False,  # job_then: group members only
        help_text="A group member: its success counts towards this callback, its failure cancels it.",
    )
    waiting_for = models.PositiveIntegerField(
        "waiting for",
        default=0,
        help_text="A group's callback: how many members have yet to succeed before it is published.",
    )
    # One timestamp per transition: queued or scheduled at creation, then queued, started, finished.
    # Not auto_now_add: the jobs of one enqueue call share one creation time, given by the call.
    created_at = models.DateTimeField("created at", default=timezone.now, editable=False)
    queued_at = models.DateTimeField("queued at", null=True, blank=True)
    started_at = models.DateTimeField("started at", null=True, blank=True, help_text="Of the latest attempt.")
    finished_at = models.DateTimeField("finished at", null=True, blank=True)
    discarded_at = models.DateTimeField(
        "discarded at", null=True, blank=True, help_text="A dead job someone looked at and let go."
    )

    class Meta:
        verbose_name = "job"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "-created_at"], name="job_state_created"),
            # The whole ledger newest first: the job list of staff, who see every job, and its
            # first page without a filter, which would otherwise read the whole table to sort it.
            models.Index(fields=["-created_at", "-id"], name="job_created"),
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            models.Index(fields=["queue", "state"], name="job_queue_state"),
            models.Index(fields=["task_name", "-created_at"], name="job_task_created"),
            # Every state change rewrites each index a row is in: those of workflow links hold only
            # the rows that have one, so a plain job pays nothing for them.
            models.Index(fields=["after"], name="job_after", condition=models.Q(after__isnull=False)),
            models.Index(fields=["then"], name="job_then", condition=models.Q(then__isnull=False)),
            # A schedule's runs (origin beat:<name>), newest first, for its admin pages: only beat's
            # jobs, so no other insert pays for it. A query must repeat the condition to use it.
            models.Index(
                fields=["origin", "-created_at"],
                name="job_schedule_runs",
                condition=models.Q(origin__startswith=SCHEDULE_ORIGIN_PREFIX),
            ),
            # An owner's active jobs, counted against their cap at every API enqueue: small, since
            # finished jobs leave it.
            models.Index(
                fields=["owner"],
                name="job_owner_active",
                condition=models.Q(state__in=ACTIVE_STATES, owner__isnull=False),
            ),
            # Held jobs, in the order the engine admits them; and the jobs holding a limited task's
            # slots, counted at each admission. A task without a limit (no key) is in neither.
            models.Index(
                fields=["task_name", "flow_key", "priority", "created_at"],
                name="job_held",
                condition=models.Q(state=JobState.HELD),
            ),
            models.Index(
                fields=["task_name", "flow_key"],
                name="job_flow_slots",
                condition=models.Q(state__in=SLOT_STATES) & ~models.Q(flow_key=""),
            ),
            # A fair-share queue's jobs held for their share, in the order they are admitted; and
            # those in the queue, counted at each admission. A job elsewhere (no share) is in neither.
            models.Index(
                fields=["queue", "share_key", "priority", "created_at", "id"],
                name="job_share_held",
                condition=models.Q(state=JobState.HELD, held_reason=HeldReason.FAIR_SHARE),
            ),
            models.Index(
                fields=["queue", "share_key"],
                name="job_share_in_queue",
                condition=models.Q(state__in=IN_QUEUE_STATES) & ~models.Q(share_key=""),
            ),
            # Dead letters by when they died, counted by the dead-letters alert every evaluation:
            # only dead rows, so a job pays for it once, when it dies.
            models.Index(fields=["finished_at"], name="job_dead_finished", condition=models.Q(state=JobState.DEAD)),
            # What the relay scans every second: small, since published jobs leave it.
            models.Index(
                fields=["run_at", "created_at"],
                name="job_unpublished",
                condition=models.Q(state__in=UNPUBLISHED_STATES),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(priority__gte=PRIORITY_HIGHEST, priority__lte=PRIORITY_LOWEST),
                name="job_priority_in_range",
            ),
            models.CheckConstraint(condition=models.Q(state__in=JobState.values), name="job_state_valid"),
            models.CheckConstraint(condition=models.Q(queue__in=QueueName.values), name="job_queue_valid"),
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="job_progress_percent"),
            # Idempotency is the database's promise, so two racing requests cannot both insert. A key
            # belongs to its owner: another user's key neither collides nor shows; jobs without an
            # owner (beat's runs, the platform's own) share one scope, which no user can reach.
            models.UniqueConstraint(
                fields=["owner", "task_name", "idempotency_key"],
                name="job_idempotency_key_unique",
                condition=models.Q(idempotency_key__isnull=False, owner__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["task_name", "idempotency_key"],
                name="job_system_idempotency_key_unique",
                condition=models.Q(idempotency_key__isnull=False, owner__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.id} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


class JobOutbox(models.Model):
    """A job whose message is owed: written in the transaction that makes the job runnable, deleted
    once its message is sent. The relay sends those whose publisher failed or died (its claim freed
    or expired). Its own narrow table, so that a sent message costs the deletion of a small row,
    not a rewrite of the job's row and every index on it."""

    job = models.OneToOneField(
        Job, verbose_name="job", primary_key=True, on_delete=models.CASCADE, related_name="outbox"
    )
    claimed_at = models.DateTimeField(
        "claimed at",
        null=True,
        blank=True,
        help_text="When a publisher (an enqueue, a retry, the relay) took it: another leaves it alone "
        "until the claim expires. Empty: its publish failed, the relay sends it.",
    )

    class Meta:
        verbose_name = "owed message"

    def __str__(self) -> str:
        return f"message of {self.job_id} (claimed {self.claimed_at})"


class JobAttempt(models.Model):
    """One run of a job by a worker: when, where, and how it ended."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        LOST = "lost", "Worker lost"

    job = models.ForeignKey(
        Job,
        verbose_name="job",
        on_delete=models.CASCADE,
        related_name="attempt_history",
        db_index=False,  # the (job, number) unique constraint serves job lookups
    )
    number = models.PositiveIntegerField("attempt")
    worker = models.CharField("worker", max_length=255, blank=True)
    started_at = models.DateTimeField("started at")
    finished_at = models.DateTimeField("finished at", null=True, blank=True)
    outcome = models.CharField("outcome", max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    error = models.TextField("error", blank=True)

    class Meta:
        verbose_name = "job attempt"
        ordering = ["job", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="jobattempt_job_number_unique")]

    def __str__(self) -> str:
        return f"{self.job_id} attempt {self.number} ({self.outcome})"


class JobAction(models.Model):
    """Who did what to a job by hand, and when: retry, cancel, discard, and a retry with an edited
    payload, which alone keeps the payload before and after."""

    class Kind(models.TextChoices):
        RETRIED = "retried", "Retried"
        EDITED = "edited", "Retried with an edited payload"
        CANCELLED = "cancelled", "Cancelled"
        #: by the platform: an earlier step of the workflow did not succeed (undone by its retry)
        STEP_CANCELLED = "step_cancelled", "Cancelled with an earlier step"
        DISCARDED = "discarded", "Discarded"

    job = models.ForeignKey(Job, verbose_name="job", on_delete=models.CASCADE, related_name="actions")
    kind = models.CharField("action", max_length=16, choices=Kind.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name="by", null=True, blank=True, on_delete=models.SET_NULL
    )
    via = models.CharField("via", max_length=32, help_text="api, admin, command, flower or workflow.")
    at = models.DateTimeField("at", auto_now_add=True)
    from_state = models.CharField("from state", max_length=16, choices=JobState.choices)
    before = models.JSONField(
        "payload before",
        null=True,
        blank=True,
        encoder=DjangoJSONEncoder,
        help_text="Of an edit: the payload it replaced.",
    )
    after = models.JSONField(
        "payload after",
        null=True,
        blank=True,
        encoder=DjangoJSONEncoder,
        help_text="Of an edit: the payload it ran with.",
    )

    class Meta:
        verbose_name = "job action"
        ordering = ["job", "at"]

    def __str__(self) -> str:
        return f"{self.job_id} {self.kind} by {self.by or 'system'} via {self.via}"
