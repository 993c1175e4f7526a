"""A worker of the bulk queue alone runs at a lower CPU priority, its pool processes too; the
other queues' workers keep theirs (BULK_WORKER_NICE). Each worker here runs in a session of its
own, as under ``make run``: with autogroup scheduling, the bulk worker's session gets the lower
priority too, or it would count against nothing outside it (tasks.platform.cpu_priority)."""

import os
from pathlib import Path

import psutil
import pytest

from tasks.platform.queues import QueueName

pytestmark = pytest.mark.django_db(transaction=True)


def niceness(worker) -> set[int]:
    """The nice values of a worker's main process and of each process of its pool."""
    main = psutil.Process(worker.pid)
    return {main.nice(), *(child.nice() for child in main.children(recursive=True))}


def autogroup_nice(worker) -> int | None:
    """The nice value of the worker's session (its autogroup); None without autogroup scheduling."""
    autogroup = Path(f"/proc/{worker.pid}/autogroup")
    return int(autogroup.read_text().split()[-1]) if autogroup.exists() else None


def test_the_bulk_worker_yields_the_cpu_and_the_others_do_not(start_worker):
    ours = os.nice(0)
    bulk = start_worker(QueueName.BULK, concurrency=2)
    default = start_worker(QueueName.DEFAULT, concurrency=2)
    both = start_worker(f"{QueueName.BULK},{QueueName.DEFAULT}", name="mixed")

    assert niceness(bulk) == {ours + 10}
    assert niceness(default) == niceness(both) == {ours}
    if autogroup_nice(bulk) is not None:
        assert autogroup_nice(bulk) == ours + 10
        assert autogroup_nice(default) == autogroup_nice(both) == 0


def test_a_nice_of_zero_keeps_the_bulk_workers_priority(start_worker):
    bulk = start_worker(QueueName.BULK, env={"BULK_WORKER_NICE": "0"})
    assert niceness(bulk) == {os.nice(0)}
