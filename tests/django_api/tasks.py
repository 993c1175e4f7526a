"""Django tasks the integration tests need beyond the example: one that always fails, one whose
run leaves a row to look for. Written against Django's API only, like the example."""

from django.contrib.auth.models import Group

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


class PaymentDeclined(Exception):
    pass


@task
def charge(amount: int) -> None:
    raise PaymentDeclined(f"card declined for {amount}")


@task
def leave_mark(name: str) -> str:
    Group.objects.get_or_create(name=name)
    return name
