"""A newcomer's first run, in a fresh copy of this working tree with nothing exported: `make run`
offers the demo products, an order paid with tok_ok ends confirmed with its mail on the local mail
page, and the README's `manage.py create_api_token admin` works in the checkout as it is."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import psutil
import pytest
import requests
from dotenv import dotenv_values

from tasks.orders.services.catalogue import DEMO_PRODUCTS
from tests.support.clone import bare_env, fresh_clone
from tests.support.processes import BIN_DIR, ManagedProcess, free_port, wait_until

VENV = BIN_DIR.parent
TIMEOUT = 10


def get(session: requests.Session, url: str, **kwargs) -> requests.Response | None:
    try:
        return session.get(url, timeout=TIMEOUT, **kwargs)
    except requests.ConnectionError:
        return None


@pytest.fixture
def first_run(tmp_path, own_redis):
    """`make run` in a fresh clone, using this virtualenv as it is (-o: not reinstalled)."""
    clone = fresh_clone(tmp_path / "clone")
    assert not (clone / "var").exists()
    ports = {"WEB_PORT": free_port(), "FLOWER_PORT": free_port(), "MAIL_CATCHER_PORT": free_port()}
    env = bare_env(**{name: str(port) for name, port in ports.items()}, REDIS_URL=own_redis.url)
    argv = ["make", "-C", str(clone), "-o", f"{VENV}/.installed", "run", f"VENV={VENV}"]
    run = ManagedProcess(argv, env, "make run").start()
    web = f"http://127.0.0.1:{ports['WEB_PORT']}"
    try:
        wait_until(lambda: (r := get(requests, f"{web}/readyz")) and r.ok, timeout=180, interval=1, what="web")
    except AssertionError:
        run.stop()
        raise AssertionError(run.log()[-5000:]) from None
    yield clone, web, run
    run.stop()


# A whole first start-up (migrate, collectstatic, every Procfile process) on a loaded machine, then an order.
@pytest.mark.timeout(480)
def test_a_fresh_make_run_sells_demo_products_confirms_an_order_shows_its_mail_and_manage_py_works(first_run):
    clone, web, run = first_run
    local = dotenv_values(clone / "var" / "local.env")
    banner = run.log()
    assert f"{web}/mail/" in banner and local["DJANGO_SUPERUSER_PASSWORD"] in banner

    # Signed in as the admin of the banner, the shop offers the demo catalogue.
    shop = requests.Session()
    login = shop.get(f"{web}/accounts/login/?next=/orders/new", timeout=TIMEOUT)
    signed_in = shop.post(
        login.url,
        data={
            "csrfmiddlewaretoken": shop.cookies["csrftoken"],
            "username": "admin",
            "password": local["DJANGO_SUPERUSER_PASSWORD"],
            "next": "/orders/new",
        },
        timeout=TIMEOUT,
    )
    assert signed_in.url == f"{web}/orders/new", signed_in.text[:2000]
    form = signed_in.text
    assert all(name in form for _, name, *_ in DEMO_PRODUCTS), form
    assert 'value="admin@localhost"' in form  # DJANGO_SUPERUSER_EMAIL: no address to type
    assert "/static/bootstrap/css/bootstrap.min." in form

    # An order paid with the sandbox's tok_ok, through the form, is confirmed.
    quantity = re.search(r'name="(quantity_\d+)"', form)[1]
    placed = shop.post(
        f"{web}/orders/new",
        data={
            "csrfmiddlewaretoken": shop.cookies["csrftoken"],
            quantity: "1",
            "payment_token": "tok_ok",
            "email": "admin@localhost",
        },
        timeout=TIMEOUT,
    )
    order_id = re.fullmatch(rf"{web}/orders/([0-9a-f-]+)", placed.url)[1]
    assert 'href="/mail/"' in placed.text
    order = wait_until(
        lambda: (
            (r := get(shop, f"{web}/api/orders/{order_id}")) and r.json()["status"] in ("confirmed", "failed") and r
        ),
        timeout=120,
        interval=0.5,
        what="the order to settle",
    ).json()
    assert order["status"] == "confirmed", order

    # Its confirmation, caught by the local mail catcher, is on the mail page.
    subject = f"Your order {order_id[:8]} is confirmed"
    mail_list = wait_until(
        lambda: (r := get(shop, f"{web}/mail/")) and subject in r.text and r, timeout=20, what="the mail page"
    )
    key = re.search(r'href="/mail/([^"]+)"', mail_list.text)[1]
    message = shop.get(f"{web}/mail/{key}", timeout=TIMEOUT).text
    assert subject in message and order_id in message and "admin@localhost" in message

    # The README's token command, in the checkout with nothing exported, makes a token that works.
    made = subprocess.run(
        [str(VENV / "bin" / "python"), "manage.py", "create_api_token", "admin"],
        cwd=clone,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    by_token = requests.get(f"{web}/api/orders/{order_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert by_token.status_code == 200 and by_token.json()["status"] == "confirmed"

    # Ctrl-C (SIGINT to the terminal's process group) stops every process.
    processes = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
    assert any("aiosmtpd" in " ".join(p.cmdline()) for p in processes), "the mail catcher runs under make run"
    os.killpg(run.pid, signal.SIGINT)
    _, alive = psutil.wait_procs(processes, timeout=40)
    assert alive == [], [(p.pid, p.name()) for p in alive]
