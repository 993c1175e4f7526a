"""The soak's steady load: single API enqueues, API batches, workflows and poison jobs.

Every job carries an idempotency key, and a client that got no answer (the web host or the
database is down, a connection dropped) asks again with the same key until it is answered, as a
careful client would: so a job is never enqueued twice, and a job the client was told about is
always one the report can look up. Each key's first try and its answer are kept for the report.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import requests

RETRY_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 10
#: the share of single jobs that hold their worker for HOLD_SECONDS
HOLDING_SHARE = 0.2
HOLD_SECONDS = (0.5, 3.0)


@dataclass
class Intent:
    key: str
    kind: str  # single, batch, workflow or poison
    first_try: float  # wall clock (time.time()), comparable with the ledger's times
    job_id: str | None = None
    tries: int = 0


@dataclass
class Load:
    api_url: str
    token: str
    rng: random.Random
    intents: dict[str, Intent] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: itertools.count = field(default_factory=itertools.count)

    def start(self, *, single_every: float, batch_every: float, batch_size: int, workflow_every: float,
              poison_every: float) -> list[threading.Thread]:  # fmt: skip
        loops = [
            (single_every, lambda: self._api_jobs("single", 1)),
            (batch_every, lambda: self._api_jobs("batch", batch_size)),
            (workflow_every, self._workflow),
            (poison_every, lambda: self._api_jobs("poison", 1)),
        ]
        threads = [threading.Thread(target=self._every, args=loop, daemon=True) for loop in loops]
        for thread in threads:
            thread.start()
        return threads

    def stop(self) -> None:
        self._stop.set()

    def _every(self, seconds: float, send) -> None:
        while not self._stop.wait(seconds * self.rng.uniform(0.5, 1.5)):
            try:
                send()
            except Exception as error:  # noqa: BLE001 - counted, and the load goes on
                self._refused(f"client {type(error).__name__}")

    def _new_intents(self, kind: str, count: int) -> list[Intent]:
        with self._lock:
            intents = [Intent(f"{kind}-{next(self._numbers)}", kind, time.time()) for _ in range(count)]
            self.intents.update((intent.key, intent) for intent in intents)
        return intents

    def _refused(self, why: str) -> None:
        with self._lock:
            self.refusals[why] = self.refusals.get(why, 0) + 1

    def _api_jobs(self, kind: str, count: int) -> None:
        intents = self._new_intents(kind, count)
        task = "soak.poison" if kind == "poison" else "soak.effect"
        jobs = [{"task": task, "payload": {"key": i.key}, "idempotency_key": i.key} for i in intents]
        if kind == "single" and self.rng.random() < HOLDING_SHARE:
            # Some jobs run long enough for a fault to strike while they run.
            jobs[0]["payload"]["hold_seconds"] = round(self.rng.uniform(*HOLD_SECONDS), 2)
        url, body = (
            (f"{self.api_url}/jobs", jobs[0]) if kind != "batch" else (f"{self.api_url}/jobs/batch", {"jobs": jobs})
        )
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self._stop.is_set() or time.time() - intents[0].first_try < 120:
            for intent in intents:
                intent.tries += 1
            try:
                answer = requests.post(url, json=body, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)
            except requests.RequestException as error:
                self._refused(type(error).__name__)
            else:
                ids = _job_ids(answer, batch=kind == "batch")
                if ids is not None:
                    for intent, job_id in zip(intents, ids, strict=True):
                        intent.job_id = job_id
                    return
                code = answer.json().get("code", "") if _is_json(answer) else ""
                self._refused(f"HTTP {answer.status_code} {code}".strip())
            time.sleep(RETRY_SECONDS)

    def _workflow(self) -> None:
        """A workflow as a view enqueues one: three steps, each waiting for the one before, written
        in one transaction by job_enqueue_chain, keyed so that a retry after an unclear error finds
        them instead of writing them again."""
        from django.db import close_old_connections

        from tasks.platform.models import Job
        from tasks.platform.services.jobs import JobRequest, job_enqueue_chain

        intents = self._new_intents("workflow", 3)
        steps = [JobRequest("soak.effect", {"key": i.key}, idempotency_key=i.key) for i in intents]
        while not self._stop.is_set() or time.time() - intents[0].first_try < 120:
            for intent in intents:
                intent.tries += 1
            try:
                existing = dict(
                    Job.objects.filter(idempotency_key__in=[i.key for i in intents]).values_list(
                        "idempotency_key", "id"
                    )
                )
                jobs_by_key = existing or {
                    j.idempotency_key: j.id for j in job_enqueue_chain(steps=steps, origin="soak")
                }
            except Exception as error:  # noqa: BLE001 - any failure of the database or Redis: ask again
                self._refused(f"workflow {type(error).__name__}")
                close_old_connections()
                time.sleep(RETRY_SECONDS)
                continue
            for intent in intents:
                intent.job_id = str(jobs_by_key[intent.key])
            return


def _is_json(answer: requests.Response) -> bool:
    return answer.headers.get("content-type", "").startswith("application/json")


def _job_ids(answer: requests.Response, *, batch: bool) -> list[str] | None:
    """The ids of the jobs an answer accepted: 202 (200 for a repeated key), or 503 with ids (kept
    pending while Redis is down); None for any other answer, which the client asks again."""
    if answer.status_code not in (200, 202, 503) or not _is_json(answer):
        return None
    data = answer.json()
    if batch:
        return [job["id"] for job in data["jobs"]] if "jobs" in data else None
    return [data["id"]] if "id" in data else None
