"""A small example written only against Django's documented task API, as a Django user writes
it from Django's docs: nothing in it knows the platform. Kept unchanged; the tests run it under
the platform's backend (tests/integration/test_django_tasks.py)."""

from django.contrib.auth.models import Group

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


@task
def calculate_meaning_of_life() -> int:
    return 42


@task(priority=10, queue_name="critical")
def create_group(name: str) -> int:
    group, _ = Group.objects.get_or_create(name=name)
    return group.pk


@task(priority=-20)
def total(numbers: list, *, start: int = 0) -> int:
    return start + sum(numbers)


@task(takes_context=True)
def flaky(context, succeed_on_attempt: int) -> dict:
    if context.attempt < succeed_on_attempt:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return {"attempt": context.attempt, "id": context.task_result.id}


@task
async def greet(name: str) -> str:
    return f"Hello, {name}!"
