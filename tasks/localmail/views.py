"""The local mail page: what the platform sent, as the local mail catcher (`make run`) kept it.

It exists only in development: with DEBUG on and MAIL_CATCHER_DIR set (var/local.env sets both);
otherwise every URL of it answers 404. A signed-in user reads the messages addressed to their own
e-mail address, staff read all.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.views.decorators.http import require_GET

from tasks.localmail.selectors import mail_get_visible, mail_list_visible


def mail_directory() -> Path | None:
    """The catcher's Maildir when the page is on, else None."""
    return settings.MAIL_CATCHER_DIR if settings.DEBUG and settings.MAIL_CATCHER_DIR else None


def mail_page_context(request: HttpRequest) -> dict:
    """Template context: the mail page's URL when it is on, for the pages that link to it."""
    return {"mail_page_url": reverse("mail_list")} if mail_directory() else {}


def _local_only(view: Callable) -> Callable:
    """404 when the page is off (before the sign-in redirect: off, it does not exist), else sign-in first."""
    signed_in_view = login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if mail_directory() is None:
            raise Http404("no local mail page here")
        return signed_in_view(request, *args, **kwargs)

    return wrapper


@require_GET
@_local_only
def mail_list(request: HttpRequest) -> HttpResponse:
    caught = mail_list_visible(directory=mail_directory(), user=request.user)
    return render(request, "tasks/mail_list.html", {"caught": caught})


@require_GET
@_local_only
def mail_detail(request: HttpRequest, key: str) -> HttpResponse:
    mail = mail_get_visible(directory=mail_directory(), user=request.user, key=key)
    if mail is None:
        raise Http404("no such message")
    return render(request, "tasks/mail_detail.html", {"mail": mail})


urlpatterns = [
    path("mail/", mail_list, name="mail_list"),
    path("mail/<str:key>", mail_detail, name="mail_detail"),
]
