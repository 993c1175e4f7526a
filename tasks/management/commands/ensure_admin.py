import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Make sure an admin exists. With DJANGO_SUPERUSER_PASSWORD set, create or update "
        "DJANGO_SUPERUSER_USERNAME (default 'admin') with it; otherwise, when there is no superuser "
        "yet, create one with a generated password and print it once. DJANGO_SUPERUSER_EMAIL, when "
        "set, becomes the admin's e-mail address (Django's createsuperuser convention)."
    )

    def handle(self, *args, **options) -> None:
        users = get_user_model().objects
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        if not password:
            if users.filter(is_superuser=True).exists():
                self.stdout.write("admin: the existing superuser is kept")
                return
            password = secrets.token_urlsafe(12)
            self.stdout.write(f"admin: {username} / {password} (generated; shown only now)")
        user, _ = users.get_or_create(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        if email:
            user.email = users.normalize_email(email)
        user.set_password(password)
        user.save()
