"""Accounts: registration, and the welcome e-mail a task sends afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse

from tasks.platform.errors import PermanentError
from tasks.platform.models import Job
from tasks.platform.services.jobs import job_enqueue

logger = logging.getLogger(__name__)

WELCOME_TASK = "notifications.send_welcome_email"


@dataclass(frozen=True)
class Registration:
    user: AbstractBaseUser
    #: the job sending the welcome e-mail
    job: Job


def user_register(*, username: str, email: str, password: str) -> Registration:
    """Create the user and queue the welcome e-mail in one transaction: a user always gets one,
    and a failed registration sends none. The mail goes once the transaction commits."""
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=username, email=email, password=password)
        job = job_enqueue(
            task_name=WELCOME_TASK,
            payload={"user_id": user.pk},
            owner=user,
            origin="register",
            # One welcome per user, however often this is asked.
            idempotency_key=f"welcome-{user.pk}",
        )
    logger.info("user %s registered; welcome e-mail is job %s", user.pk, job.pk)
    return Registration(user=user, job=job)


def user_send_welcome_email(*, user_id: int) -> dict[str, Any]:
    """Send the welcome e-mail. SMTP errors propagate, so the task retries; a redelivery may send it
    again, with the same Message-ID, which mail clients and servers recognise as one message."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        return {"user": user_id, "skipped": "user deleted"}
    if not user.email:
        raise PermanentError(f"user {user_id} has no e-mail address")
    message = welcome_email(user)
    message.send()
    logger.info("welcome e-mail sent to user %s", user.pk)
    return {"user": user.pk, "to": user.email, "message_id": message.extra_headers["Message-ID"]}


def welcome_email(user) -> EmailMultiAlternatives:
    context = {"user": user, "order_url": settings.SITE_URL.rstrip("/") + reverse("order_form")}
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    message = EmailMultiAlternatives(
        subject=f"Welcome, {user.get_username()}",
        body=render_to_string("emails/welcome.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
        headers={"Message-ID": f"<welcome-{user.pk}@{domain}>"},
    )
    message.attach_alternative(render_to_string("emails/welcome.html", context), "text/html")
    return message
