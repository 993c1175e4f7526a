"""Who may enqueue what, how much and how fast: one check behind every door that enqueues for a user.

A caller's ``Allowance`` comes from their role (tasks.platform.permissions: operator or user), the
defaults in settings and the ``EnqueueLimits`` an admin set for the user or for the API token
used (the token's, where set, over the user's):

- tasks: each public task declares its audience; ``ops.*`` are for operators only (403);
- queues: operators may pick any queue; a user gets their task's own queue, and may name another
  only if their limits list it (403 otherwise);
- priority: operators any; a user no more urgent than ``API_USER_HIGHEST_PRIORITY`` (403), and
  that priority when they name none;
- active jobs: at most ``API_MAX_ACTIVE_JOBS`` not yet finished, counted before each enqueue (429);
- rate: ``API_RATE_LIMIT_PER_MINUTE`` jobs a minute, in a Redis bucket shared by every web process
  (429 with Retry-After); a token with a rate of its own has a bucket of its own.

The active-job count is read, not reserved: concurrent requests of one caller may together pass
the cap by what they carry, which the rate limit bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings

from tasks.platform.models import EnqueueLimits
from tasks.platform.permissions import is_operator
from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST
from tasks.platform.ratelimit import take
from tasks.platform.registry import TASK_AUDIENCES, Audience
from tasks.platform.selectors.jobs import jobs_active_count
from tasks.platform.services.jobs import JobRequest, task_queue

#: how long a caller at the active-job cap is told to wait before trying again
ACTIVE_CAP_RETRY_AFTER_SECONDS = 10


class EnqueueRefused(Exception):
    """The caller may not enqueue this (403) or not now (429); nothing was written."""

    def __init__(
        self, detail: str, *, status: int, code: str, retry_after: int | None = None, index: int | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.retry_after, self.index = status, code, retry_after, index


@dataclass(frozen=True)
class Allowance:
    operator: bool
    #: jobs a minute (0: no limit), counted in ``rate_bucket``
    rate_per_minute: int
    rate_bucket: str
    #: jobs not yet finished at once (0: no limit)
    max_active_jobs: int
    #: queues it may name; None: any
    queues: frozenset[str] | None
    #: the most urgent priority it may ask for
    highest_priority: int


def allowance_for(*, user, token=None) -> Allowance:
    """What ``user`` may enqueue, through ``token`` (an ApiToken) or a session (None)."""
    operator = is_operator(user)
    token_limits = _limits(token) if token is not None else None
    overrides = [limits for limits in (token_limits, _limits(user)) if limits is not None]

    def chosen(field: str, default):
        for limits in overrides:
            value = getattr(limits, field)
            if value is not None and value != []:
                return value
        return default

    own_rate = token_limits is not None and token_limits.rate_per_minute is not None
    queues = chosen("queues", None)
    return Allowance(
        operator=operator,
        rate_per_minute=chosen("rate_per_minute", settings.API_RATE_LIMIT_PER_MINUTE),
        rate_bucket=f"token:{token.pk}" if own_rate else f"user:{user.pk}",
        max_active_jobs=chosen("max_active_jobs", settings.API_MAX_ACTIVE_JOBS),
        queues=frozenset(queues) if queues is not None else (None if operator else frozenset()),
        highest_priority=chosen(
            "highest_priority", PRIORITY_HIGHEST if operator else settings.API_USER_HIGHEST_PRIORITY
        ),
    )


def _limits(owner) -> EnqueueLimits | None:
    """The limits row of a user or token; a reverse one-to-one that raises when there is none."""
    try:
        return owner.enqueue_limits
    except EnqueueLimits.DoesNotExist:
        return None


def job_requests_authorize(*, allowance: Allowance, requests: Sequence[JobRequest], batch: bool = False) -> None:
    """Refuse (403, naming the item of a ``batch``) a task, queue or priority outside the
    allowance; give a request without a priority the allowance's default."""
    for index, request in enumerate(requests):
        at = index if batch else None
        audience = TASK_AUDIENCES.get(request.task_name, Audience.OPERATORS)
        if audience is Audience.OPERATORS and not allowance.operator:
            raise EnqueueRefused(
                f"{request.task_name} may be enqueued by operators only", status=403, code="task_not_allowed", index=at
            )
        queue, own_queue = request.queue, task_queue(request.task_name)
        if queue not in (None, own_queue) and allowance.queues is not None and queue not in allowance.queues:
            allowed = ", ".join(sorted(allowance.queues)) or f"only its own ({own_queue})"
            raise EnqueueRefused(
                f"queue {queue!r} is not yours to choose: {allowed}", status=403, code="queue_not_allowed", index=at
            )
        if request.priority is None:
            request.priority = max(PRIORITY_DEFAULT, allowance.highest_priority)
        elif request.priority < allowance.highest_priority:
            raise EnqueueRefused(
                f"priority {request.priority} is more urgent than you may ask for "
                f"({allowance.highest_priority} at most)",
                status=403,
                code="priority_not_allowed",
                index=at,
            )


def enqueue_admit(*, user, allowance: Allowance, jobs: int) -> None:
    """Let ``jobs`` new active jobs of ``user`` in, or refuse (429) at the active-job cap or the
    rate limit. The cap is checked first, so a refused request spends nothing of the rate."""
    cap = allowance.max_active_jobs
    if cap:
        active = jobs_active_count(owner=user, up_to=cap + 1)
        if active + jobs > cap:
            raise EnqueueRefused(
                f"{active} of your jobs are not finished and the cap is {cap}: "
                f"wait for some to finish before adding {jobs} more",
                status=429,
                code="too_many_active_jobs",
                retry_after=ACTIVE_CAP_RETRY_AFTER_SECONDS,
            )
    verdict = take(bucket=f"enqueue:{allowance.rate_bucket}", limit_per_minute=allowance.rate_per_minute, cost=jobs)
    if not verdict.allowed:
        raise EnqueueRefused(verdict.detail, status=429, code="throttled", retry_after=verdict.retry_after)


def order_admit(*, user) -> None:
    """Let one more order of ``user`` be placed, or refuse (429): ``ORDER_RATE_LIMIT_PER_MINUTE``
    orders a minute, on the API and the order form alike, so that neither is a card-testing oracle."""
    verdict = take(
        bucket=f"orders:user:{user.pk}", limit_per_minute=settings.ORDER_RATE_LIMIT_PER_MINUTE, what="orders"
    )
    if not verdict.allowed:
        raise EnqueueRefused(verdict.detail, status=429, code="throttled", retry_after=verdict.retry_after)
