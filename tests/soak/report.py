"""What the soak found, from the ledger, the execution log and its own records.

- lost: a job a client was answered for (or that the ledger holds under a client's key) that is not
  finished once everything is healthy again, or that succeeded without running. Must be 0.
- dead: only jobs designed to die (soak.poison) may be dead.
- effects run more than once: at-least-once delivery, with why (the same attempt delivered twice,
  or a later attempt after one judged lost) and whether the effect was applied once (deduplicated).
- schedule ticks: fired against the 2 s slots between the first and the last; a slot missed while
  no fault could explain it is an error, and so is a due time fired twice.
- recovery per fault: from the fault to the moment every job it could have held up was running
  again (queued or running then, or first tried by a client after it); at most RECOVERY_LIMIT s.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tasks.platform.models.jobs import FINISHED_STATES
from tests.soak.faults import Fault
from tests.soak.load import Intent

RECOVERY_LIMIT_SECONDS = 60
TICK_SECONDS = 2


@dataclass
class Report:
    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    unexpected_dead: list[str] = field(default_factory=list)
    repeated_effects: list[dict] = field(default_factory=list)
    ticks: dict[str, object] = field(default_factory=dict)
    recovery: dict[str, float | None] = field(default_factory=dict)
    faults: list[dict] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} jobs lost: {self.lost[:5]}")
        if self.unexpected_dead:
            found.append(
                f"{len(self.unexpected_dead)} jobs dead that were not designed to die: {self.unexpected_dead[:5]}"
            )
        if not_deduplicated := [e for e in self.repeated_effects if not e["deduplicated"]]:
            found.append(f"{len(not_deduplicated)} effects applied more than once")
        if self.ticks.get("fired_twice") or self.ticks.get("missing_unexplained"):
            found.append(f"schedule ticks: {self.ticks}")
        for kind, seconds in self.recovery.items():
            if seconds is None or seconds > RECOVERY_LIMIT_SECONDS:
                found.append(f"{kind}: recovered in {seconds} s (limit {RECOVERY_LIMIT_SECONDS} s)")
        return found

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "failures": self.failures}, indent=2, default=str)

    def table(self) -> str:
        lines = [f"soak report (seed {self.seed})", "", "| jobs | count |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in self.counts.items()]
        lines += ["", "| fault kind | injected | longest recovery (s) |", "|---|---:|---:|"]
        injected = Counter(f["kind"] for f in self.faults)
        lines += [
            f"| {kind} | {injected[kind]} | {'never' if seconds is None else f'{seconds:.1f}'} |"
            for kind, seconds in sorted(self.recovery.items())
        ]
        lines += ["", "| schedule ticks | |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in self.ticks.items()]
        lines += ["", f"effects run more than once: {len(self.repeated_effects)}"]
        reasons = Counter((e["why"], e["deduplicated"]) for e in self.repeated_effects)
        lines += [f"- {count} x {why}; deduplicated by idempotency: {dedup}" for (why, dedup), count in reasons.items()]
        if self.refusals:
            lines += [
                "",
                "client retries (no answer, or an error answer): "
                + ", ".join(f"{k} {v}" for k, v in self.refusals.items()),
            ]
        lines += ["", "verdict: " + ("ok" if not self.failures else "FAILED: " + "; ".join(self.failures))]
        return "\n".join(lines)


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def build(
    *,
    seed: int,
    since: float,
    intents: dict[str, Intent],
    faults: list[Fault],
    soak_dir: Path,
    refusals: dict[str, int],
) -> Report:
    """The report of a soak whose load began at ``since`` (wall clock, every process healthy)."""
    from tasks.platform.models import Job, JobAttempt

    report = Report(seed=seed, faults=[f.__dict__ for f in faults], refusals=dict(refusals))
    by_key = {
        row["idempotency_key"]: row
        for row in Job.objects.filter(idempotency_key__in=list(intents)).values(
            "id", "idempotency_key", "state", "task_name", "created_at"
        )
    }
    executions: dict[str, list[dict]] = defaultdict(list)
    log = soak_dir / "executions.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        record = json.loads(line)
        executions[record["key"]].append(record)

    states: Counter[str] = Counter()
    unanswered_not_written = 0
    for key, intent in intents.items():
        row = by_key.get(key)
        if row is None:
            if intent.job_id is not None:
                report.lost.append(f"{key} (answered as {intent.job_id}, not in the ledger)")
            else:
                unanswered_not_written += 1  # never accepted: the client gave up without an answer
            continue
        states[row["state"]] += 1
        if row["state"] not in FINISHED_STATES:
            report.lost.append(f"{key} ({row['state']})")
        elif row["state"] == "succeeded" and not executions.get(key):
            report.lost.append(f"{key} (succeeded without running)")
        elif row["state"] in {"dead", "failed"} and intent.kind != "poison":
            report.unexpected_dead.append(f"{key} ({row['state']})")

    report.counts = {
        "enqueued (in the ledger)": sum(states.values()),
        "succeeded": states["succeeded"],
        "dead (designed to die)": sum(
            1 for k, i in intents.items() if i.kind == "poison" and by_key.get(k, {}).get("state") == "dead"
        ),
        "dead (other)": len(report.unexpected_dead),
        "lost": len(report.lost),
        "never accepted (client gave up unanswered)": unanswered_not_written,
    }

    ticks = Job.objects.filter(task_name="soak.tick").values("id", "idempotency_key", "state")
    tick_keys = {f"tick/{t['id']}": t for t in ticks}
    for key, records in executions.items():
        if len(records) < 2 or intents.get(key, Intent(key, "", 0)).kind == "poison":
            continue  # a poison job runs once per attempt, by its retry policy
        attempts = [r["attempt"] for r in records]
        why = ("the same attempt delivered twice (redelivered before its ack)" if len(set(attempts)) < len(attempts)
               else "a later attempt after one judged lost")  # fmt: skip
        report.repeated_effects.append(
            {
                "key": key,
                "runs": len(records),
                "attempts": attempts,
                "why": why,
                "deduplicated": sum(r["applied"] for r in records) <= 1,
            }
        )
    report.ticks = _ticks(ticks, faults, since=since)
    report.counts["schedule ticks run"] = sum(1 for key in tick_keys if executions.get(key))

    attempts = list(JobAttempt.objects.values("job_id", "number", "worker", "started_at", "outcome"))
    jobs = {str(j["id"]): j for j in Job.objects.values("id", "task_name", "created_at", "state")}
    report.recovery = _recovery(faults, intents, attempts, jobs)
    return report


def _ticks(ticks, faults: list[Fault], *, since: float) -> dict[str, object]:
    """The schedule's due times fired since the load began (before, beat may still have been
    starting: its first run then catches up as the missed-run policy says)."""
    due = sorted(
        moment
        for t in ticks
        if t["idempotency_key"]
        and (moment := datetime.fromisoformat(t["idempotency_key"].split(":", 2)[2]).timestamp()) >= since
    )
    fired_twice = sum(count - 1 for count in Counter(due).values() if count > 1)
    distinct = sorted(set(due))
    missing_explained = missing_unexplained = 0
    unexplained: list[str] = []
    for before, after in itertools.pairwise(distinct):
        missed = round((after - before) / TICK_SECONDS) - 1
        if missed <= 0:
            continue
        explained = any(before - TICK_SECONDS <= f.at <= after and f.kind not in {"pool_child_kill", "worker_host_kill",
                        "worker_partition", "relay_kill"} for f in faults)  # fmt: skip
        if explained:
            missing_explained += missed
        else:
            missing_unexplained += missed
            unexplained.append(f"{missed} after {datetime.fromtimestamp(before, UTC).isoformat()}")
    expected = round((distinct[-1] - distinct[0]) / TICK_SECONDS) + 1 if distinct else 0
    return {
        "fired": len(distinct),
        "expected (2 s slots)": expected,
        "fired_twice": fired_twice,
        "missing_during_beat_faults": missing_explained,
        "missing_unexplained": missing_unexplained,
        "unexplained_gaps": unexplained,
    }


def _recovery(
    faults: list[Fault], intents: dict[str, Intent], attempts: list[dict], jobs: dict[str, dict]
) -> dict[str, float | None]:
    starts: dict[str, list[tuple[float, int, str, str]]] = defaultdict(list)
    for a in attempts:
        starts[str(a["job_id"])].append((a["started_at"].timestamp(), a["number"], a["worker"], a["outcome"]))
    for runs in starts.values():
        runs.sort()
    first_try = {i.job_id: i.first_try for i in intents.values() if i.job_id}
    waits = {str(j): jobs[j] for j in jobs if jobs[j]["task_name"] == "soak.effect"}
    longest: dict[str, float | None] = {}
    for fault in faults:
        worst = 0.0
        for job_id, job in waits.items():
            runs = starts.get(job_id, [])
            created = _ts(job["created_at"])
            held = False
            if first_try.get(job_id, created) >= fault.at and first_try.get(job_id, created) <= fault.ends + 1:
                held = True  # a client's first try after the fault: the probe
            elif created <= fault.at and not any(start <= fault.at for start, *_ in runs):
                held = True  # waiting when it struck
            elif any(
                start <= fault.at and outcome == "lost" and worker in fault.workers
                for start, _, worker, outcome in runs
            ):
                held = True  # running where it struck, and lost
            if not held:
                continue
            later = [start for start, *_ in runs if start > fault.at]
            if not later:
                if job["state"] != "succeeded":
                    worst = None
                    break
                continue
            worst = max(worst, later[0] - fault.at)
        previous = longest.get(fault.kind, 0.0)
        longest[fault.kind] = None if worst is None or previous is None else max(previous, worst)
    return longest
