from django.core.management.base import BaseCommand

from tasks.orders.services.catalogue import catalogue_seed_demo


class Command(BaseCommand):
    help = (
        "Create the demo catalogue's products that are missing (`make run` does this). Safe to re-run: "
        "a product whose sku exists is kept as it is."
    )

    def handle(self, *args, **options) -> None:
        outcome = catalogue_seed_demo()
        created = [sku for sku, made in outcome.items() if made]
        kept = [sku for sku, made in outcome.items() if not made]
        if created:
            self.stdout.write(self.style.SUCCESS(f"demo catalogue: created {', '.join(created)}"))
        if kept:
            self.stdout.write(f"demo catalogue: kept {', '.join(kept)}")
