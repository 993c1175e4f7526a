from django.core.management.base import BaseCommand

from tasks.platform.services.schedules import schedules_seed


class Command(BaseCommand):
    help = (
        "Create the platform's beat schedules that are missing (migrate does this too). "
        "Safe to re-run: existing schedules, and an admin's edits to them, are kept as they are."
    )

    def handle(self, *args, **options) -> None:
        for name, created in schedules_seed().items():
            if created:
                self.stdout.write(self.style.SUCCESS(f"created: {name}"))
            else:
                self.stdout.write(f"kept:    {name}")
