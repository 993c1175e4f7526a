"""JSON log lines, and the job fields a task's lines carry (tasks.platform.logs), in process."""

import json
import logging

import pytest

from tasks.platform import logs


@pytest.fixture
def job_free_context():
    logs.clear()
    yield
    logs.clear()


def formatted(message: str, *args) -> dict:
    record = logging.LogRecord("tasks.platform.tasks.ops", logging.INFO, __file__, 1, message, args, None)
    assert logs.JobContextFilter().filter(record)
    return json.loads(logs.json_formatter().format(record))


def test_a_line_written_while_a_job_runs_names_the_job_task_and_attempt(job_free_context):
    logs.bind("0193-job", "ops.ping", 2)

    line = formatted("ping on %s", "critical@host")

    assert line["message"] == "ping on critical@host"
    assert line["level"] == "INFO"
    assert line["logger"] == "tasks.platform.tasks.ops"
    assert "time" in line
    assert (line["job_id"], line["task"], line["attempt"]) == ("0193-job", "ops.ping", 2)


def test_a_line_before_the_ledger_numbered_the_run_has_no_attempt_yet(job_free_context):
    logs.bind("0193-job", "ops.ping")

    assert formatted("starting")["attempt"] is None


def test_a_line_outside_any_job_names_none_and_no_trace_without_tracing(job_free_context):
    line = formatted("worker ready")

    assert not {"job_id", "task", "attempt", "trace_id", "span_id"} & set(line)


def test_clear_ends_the_jobs_lines(job_free_context):
    logs.bind("0193-job", "ops.ping", 1)
    logs.clear()

    assert "job_id" not in formatted("after the run")
