from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tasks.platform.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user and print it once (only its hash is stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        _, token = ApiToken.issue(user)
        self.stdout.write(token)
