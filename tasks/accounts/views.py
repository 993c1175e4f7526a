"""Views of accounts: registration (the welcome e-mail is sent by a task, not here)."""

from __future__ import annotations

from django import forms
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from tasks.accounts.services import user_register


class RegistrationForm(UserCreationForm):
    """Django's sign-up form, with the e-mail address the welcome mail goes to."""

    email = forms.EmailField(label="E-mail", max_length=254)

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")


@csrf_protect
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    """Create the account, sign the new user in, queue the welcome e-mail, redirect."""
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    form = RegistrationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            registration = user_register(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
            )
        except IntegrityError:
            # Another request took the username between the form's check and the insert.
            form.add_error("username", "A user with that username already exists.")
        else:
            login(request, registration.user, backend="django.contrib.auth.backends.ModelBackend")
            safe = url_has_allowed_host_and_scheme(
                next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
            )
            return redirect(next_url if safe else reverse("order_form"))
    return render(request, "registration/register.html", {"form": form, "next": next_url})


urlpatterns = [
    path("accounts/register", register, name="register"),
]
