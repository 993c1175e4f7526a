"""A Django task that also declares the platform's options of ``@task`` (not portable to another
backend): a pydantic payload schema, an attempt budget and a concurrency limit keyed by an argument."""

from pydantic import BaseModel, ConfigDict, Field

from tasks.platform.concurrency import Limit

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


class Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1)
    cents: int = Field(gt=0)


@task(payload=Transfer, max_attempts=2, concurrency=Limit(1, key="account"))
def transfer(account: str, cents: int) -> dict:
    return {"account": account, "cents": cents}
