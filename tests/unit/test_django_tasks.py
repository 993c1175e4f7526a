"""Django's task API on the platform, in-process: how priorities, queues, delays, arguments,
states and errors map onto the ledger (no worker; tests/integration/test_django_tasks.py runs them)."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from pydantic import BaseModel, ValidationError

from tasks.models import Job, JobAttempt
from tasks.platform.django_tasks import mapping
from tasks.platform.django_tasks.backend import DJANGO_TASKS, DjangoApiTask, ledger_result, owned_by
from tasks.platform.django_tasks.compat import InvalidTask, TaskResultDoesNotExist, TaskResultStatus, task_backends
from tasks.platform.registry import LEDGER_TASKS, SCHEDULABLE_TASKS
from tasks.platform.services.jobs import job_payload_validate, task_queue
from tests.django_api import example, tasks

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task


# --- priorities -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("django", "step"),
    [(100, 0), (81, 0), (80, 1), (21, 3), (20, 4), (1, 4), (0, 5), (-1, 6), (-25, 6), (-26, 7), (-100, 9)],
)
def test_django_priorities_map_onto_the_platforms_steps(django, step):
    assert mapping.platform_priority(django) == step


def test_the_priority_mapping_keeps_djangos_order():
    steps = [mapping.platform_priority(p) for p in range(100, -101, -1)]
    assert steps == sorted(steps)  # more urgent in Django is never less urgent on the platform
    assert set(steps) == set(range(10))


def test_a_jobs_step_shows_the_tasks_own_priority_or_one_of_that_step():
    assert mapping.django_priority(4, declared=10) == 10
    for step in range(10):
        assert mapping.platform_priority(mapping.django_priority(step, declared=0)) == step


# --- states and errors ------------------------------------------------------------------------
def test_ledger_states_map_onto_djangos_statuses():
    assert mapping.result_status(Job.State.SUCCEEDED) == TaskResultStatus.SUCCESSFUL
    assert mapping.result_status(Job.State.STARTED) == TaskResultStatus.RUNNING
    for state in (Job.State.FAILED, Job.State.DEAD, Job.State.CANCELLED):
        assert mapping.result_status(state) == TaskResultStatus.FAILED
    for state in (Job.State.QUEUED, Job.State.SCHEDULED, Job.State.RETRYING, Job.State.HELD, Job.State.PENDING):
        assert mapping.result_status(state) == TaskResultStatus.READY


def test_an_errors_text_names_its_exception_class():
    assert mapping.exception_path(ValueError) == "ValueError"
    assert mapping.exception_path(tasks.PaymentDeclined) == "tests.django_api.tasks.PaymentDeclined"
    assert mapping.error_class_path("ValueError: boom") == "builtins.ValueError"
    assert (
        mapping.error_class_path("tests.django_api.tasks.PaymentDeclined: no")
        == "tests.django_api.tasks.PaymentDeclined"
    )
    assert mapping.error_class_path("worker lost: its heartbeat stopped") == "builtins.Exception"


# --- arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [{1: "a"}, float("nan"), float("inf"), object(), timezone.now(), {"a": {2}}])
def test_arguments_json_cannot_give_back_are_refused(value):
    with pytest.raises((TypeError, ValueError)):
        mapping.json_round_trip([value])


def test_json_arguments_pass_as_django_normalizes_them():
    assert mapping.json_round_trip({"a": (1, 2), "b": [None, True, 1.5, "x"]}) == {
        "a": [1, 2],
        "b": [None, True, 1.5, "x"],
    }


def sample(a, b: int, /, c: str = "c", *rest: int, d: float, e=None, **more): ...


def test_a_call_binds_to_parameter_names_and_calls_back_the_same_way():
    params = mapping.parameters(sample, takes_context=False)
    schema = mapping.signature_schema("sample", params)
    payload = mapping.bind(params, [1, 2, "x", 3, 4], {"d": 1, "z": "more"})
    assert payload == {"a": 1, "b": 2, "c": "x", "rest": [3, 4], "d": 1, "more": {"z": "more"}}

    model = schema.model_validate(payload)
    assert model.model_dump(mode="json") == payload  # defaults not passed stay out of the payload
    assert mapping.call_arguments(params, model) == ([1, 2, "x", 3, 4], {"d": 1, "z": "more"})


def test_a_call_the_function_would_refuse_is_refused_with_pythons_error():
    params = mapping.parameters(sample, takes_context=False)
    with pytest.raises(TypeError):
        mapping.bind(params, [1], {"d": 1})  # b missing
    with pytest.raises(TypeError):
        mapping.bind(params, [1, 2], {})  # d missing


def test_the_signature_schema_checks_json_scalars_and_names():
    params = mapping.parameters(sample, takes_context=False)
    schema = mapping.signature_schema("sample", params)
    with pytest.raises(ValidationError):
        schema.model_validate({"a": 1, "b": "2", "d": 1.0})  # b: int, strictly (JSON's types)
    with pytest.raises(ValidationError):
        schema.model_validate({"a": 1, "b": 2})  # d required
    assert schema.model_json_schema()["required"] == ["a", "b", "d"]


def test_a_declared_schema_must_fit_the_function():
    class Args(BaseModel):
        name: str
        other: int = 0

    def takes_name(name: str): ...

    def takes_both(name, other=1): ...

    assert "other" in mapping.payload_schema_fits(Args, list(inspect.signature(takes_name).parameters.values()))
    assert mapping.payload_schema_fits(Args, list(inspect.signature(takes_both).parameters.values())) is None


# --- declaration ------------------------------------------------------------------------------
def test_each_django_task_is_a_schedulable_ledger_task_named_by_its_import_path():
    name = "tests.django_api.example.create_group"
    assert DJANGO_TASKS[name].func is example.create_group.func
    assert isinstance(LEDGER_TASKS[name], DjangoApiTask)
    assert name in SCHEDULABLE_TASKS
    assert task_queue(name) == "critical"  # a schedule without a queue runs on the task's own
    assert task_queue("tests.django_api.example.total") == "default"


def test_a_task_naming_an_undeclared_queue_is_refused_with_djangos_exception():
    with pytest.raises(InvalidTask, match="nowhere"):
        example.total.using(queue_name="nowhere")


def test_a_function_not_at_module_level_is_refused():
    with pytest.raises(InvalidTask):

        @task
        def inner(): ...


# --- enqueue and results, in the caller's transaction ------------------------------------------
pytestmark_db = pytest.mark.django_db


@pytestmark_db
def test_enqueue_writes_a_ledger_job_whose_id_is_the_results():
    with transaction.atomic():
        result = example.total.enqueue([1, 2, 3], start=10)
        job = Job.objects.get(pk=result.id)

    assert result.status == TaskResultStatus.READY
    assert (job.task_name, job.queue, job.priority) == ("tests.django_api.example.total", "default", 6)
    assert job.payload == {"numbers": [1, 2, 3], "start": 10}
    assert result.args == [[1, 2, 3]] and result.kwargs == {"start": 10}
    assert job.owner is None


@pytestmark_db
def test_priority_queue_name_run_after_and_owner_map_onto_the_job(django_user_model):
    user = django_user_model.objects.create_user("dana")
    due = timezone.now() + timedelta(minutes=10)
    with owned_by(user):
        result = example.calculate_meaning_of_life.using(priority=100, queue_name="bulk", run_after=due).enqueue()
    job = Job.objects.get(pk=result.id)

    assert (job.queue, job.priority, job.state, job.run_at, job.owner) == ("bulk", 0, Job.State.SCHEDULED, due, user)
    again = task_backends["default"].get_result(result.id)
    assert (again.task.queue_name, again.task.priority, again.task.run_after) == ("bulk", 100, due)


@pytestmark_db
def test_arguments_that_are_not_json_fail_at_enqueue_with_djangos_error_and_write_nothing():
    with pytest.raises(TypeError, match="Unsupported type"):
        example.total.enqueue([timezone.now()])
    with pytest.raises(TypeError):
        example.total.enqueue([1], bogus=2)
    assert not Job.objects.exists()


@pytestmark_db
def test_a_delay_beyond_what_the_platform_keeps_is_refused_with_djangos_exception():
    with pytest.raises(InvalidTask, match="delay"):
        example.total.using(run_after=timezone.now() + timedelta(days=31)).enqueue([1])


@pytestmark_db
def test_get_result_reads_status_attempts_errors_and_return_value_from_the_ledger():
    backend = task_backends["default"]
    result = tasks.charge.enqueue(5)
    job = Job.objects.get(pk=result.id)
    now = timezone.now()
    JobAttempt.objects.create(job=job, number=1, worker="w1", started_at=now, outcome="failed", error="ValueError: x")
    JobAttempt.objects.create(
        job=job,
        number=2,
        worker="w2",
        started_at=now,
        outcome="failed",
        error="tests.django_api.tasks.PaymentDeclined: no",
    )
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.DEAD, attempts=2, error="tests.django_api.tasks.PaymentDeclined: no", traceback="Traceback …"
    )

    failed = backend.get_result(result.id)
    result.refresh()

    assert failed.status == result.status == TaskResultStatus.FAILED
    assert failed.attempts == 2 and failed.worker_ids == ["w1", "w2"]
    assert [e.exception_class for e in failed.errors] == [ValueError, tasks.PaymentDeclined]
    assert failed.errors[-1].traceback == "Traceback …"
    assert tasks.charge.get_result(result.id).id == result.id

    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, result={"ok": 1}, finished_at=now)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == {"ok": 1}


@pytestmark_db
def test_an_unknown_id_or_another_tasks_job_does_not_exist_for_django():
    from tasks.platform.services.jobs import job_enqueue

    backend = task_backends["default"]
    platform_job = job_enqueue(task_name="ops.ping")
    for missing in ("nope", "00000000-0000-0000-0000-000000000000", str(platform_job.id)):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(missing)


@pytestmark_db
def test_admin_schedules_validate_arguments_against_the_signature():
    name = "tests.django_api.example.total"
    assert job_payload_validate(task_name=name, payload={"numbers": [1]}) == {"numbers": [1]}
    with pytest.raises(Exception, match="schema"):
        job_payload_validate(task_name=name, payload={"numbers": [1], "unknown": 1})
    with pytest.raises(Exception, match="schema"):
        job_payload_validate(task_name=name, payload={})


def test_ledger_result_shows_a_cancelled_job_as_failed_without_attempts():
    job = Job(task_name="tests.django_api.example.total", queue="default", priority=5, payload={"numbers": [2]})
    job.state = Job.State.CANCELLED
    result = ledger_result(DJANGO_TASKS[job.task_name], job, [], "default")
    assert result.status == TaskResultStatus.FAILED and result.errors == []
    assert result.args == [[2]] and result.kwargs == {}


@pytestmark_db
def test_the_platforms_options_of_task_declare_a_schema_attempts_and_flow_control():
    from tasks.platform.concurrency import CONCURRENCY
    from tests.django_api import platform_options

    name = "tests.django_api.platform_options.transfer"
    assert LEDGER_TASKS[name].max_attempts == 2
    assert CONCURRENCY[name].key == "account"
    assert LEDGER_TASKS[name].payload_schema is platform_options.Transfer

    result = platform_options.transfer.enqueue("acme", cents=250)
    job = Job.objects.get(pk=result.id)
    assert (job.payload, job.flow_key) == ({"account": "acme", "cents": 250}, "acme")
    with pytest.raises(ValueError, match="cents"):
        platform_options.transfer.enqueue("acme", cents=0)


def test_a_declared_schema_that_does_not_fit_the_function_is_refused():
    from tests.django_api.platform_options import Transfer

    with pytest.raises(InvalidTask, match="does not take: account, cents"):
        task(payload=Transfer)(mapping.bind)  # a module-level function whose parameters differ
