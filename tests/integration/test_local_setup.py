"""What `make run` does to a database before the platform starts: the admin (with the e-mail of
DJANGO_SUPERUSER_EMAIL) and the demo catalogue, both safe to repeat."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tasks.models import Product
from tasks.orders.services.catalogue import DEMO_PRODUCTS
from tests.support.processes import BASE_DIR, BIN_DIR

pytestmark = pytest.mark.django_db(transaction=True)


def ensure_admin(process_env: dict[str, str], **env: str) -> None:
    argv = [str(BIN_DIR / "python"), "manage.py", "ensure_admin"]
    subprocess.run(argv, cwd=BASE_DIR, env={**process_env, **env}, check=True, timeout=120, capture_output=True)


def test_ensure_admin_sets_the_email_of_django_superuser_email_on_create_and_update(process_env):
    admin = {"DJANGO_SUPERUSER_USERNAME": "boss", "DJANGO_SUPERUSER_PASSWORD": "boss-pass-123"}

    ensure_admin(process_env, **admin, DJANGO_SUPERUSER_EMAIL="boss@example.com")
    created = get_user_model().objects.get(username="boss")
    ensure_admin(process_env, **admin, DJANGO_SUPERUSER_EMAIL="chief@example.com")
    updated = get_user_model().objects.get(username="boss")
    ensure_admin(process_env, **admin, DJANGO_SUPERUSER_EMAIL="")  # unset: the address stays

    assert created.email == "boss@example.com"
    assert (created.is_superuser, created.is_staff) == (True, True)
    assert updated.email == "chief@example.com"
    assert get_user_model().objects.get(username="boss").email == "chief@example.com"
    assert get_user_model().objects.get(username="boss").check_password("boss-pass-123")


def test_the_demo_catalogue_is_seeded_once_and_never_changes_a_product():
    Product.objects.create(sku="LAMP", name="The shop's own lamp", price=Decimal("99.00"), stock=1)

    first_run, second_run = StringIO(), StringIO()
    call_command("seed_demo_catalogue", stdout=first_run)
    first = {product.sku: (product.name, product.price, product.stock) for product in Product.objects.all()}
    Product.objects.filter(sku="MUG").update(stock=3)  # sold since
    call_command("seed_demo_catalogue", stdout=second_run)

    assert 5 <= len(DEMO_PRODUCTS) <= 8
    assert set(first) == {sku for sku, *_ in DEMO_PRODUCTS}
    assert first["LAMP"] == ("The shop's own lamp", Decimal("99.00"), 1)
    assert all(stock > 0 and price > 0 for _, price, stock in first.values())
    assert Product.objects.count() == len(DEMO_PRODUCTS)
    assert Product.objects.get(sku="MUG").stock == 3
    assert "kept LAMP" in first_run.getvalue() and "created" in first_run.getvalue()
    assert "created" not in second_run.getvalue()
