"""Order fulfillment end to end: the HTTP API of a real web process (which also serves the sandbox
payment gateway), real critical workers, the relay, Redis, and a real SMTP server.

validate payment -> reserve inventory -> send confirmation, each step a job that starts only when
the one before succeeded; failures fail the order; stock never goes negative.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psutil
import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection, transaction

from tasks.notifications.models import WebhookEndpoint
from tasks.orders.models import Order, Product
from tasks.orders.services.orders import order_reserve_inventory
from tasks.platform.models import ApiToken, Job, JobAttempt
from tests.support.http_receiver import HttpReceiver
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10
#: retries of a gateway timeout or 5xx come fast in tests, and one customer places more orders a
#: minute here than the order rate allows
FAST = {
    "PAYMENT_RETRY_BACKOFF_SECONDS": "1",
    "PAYMENT_GATEWAY_TIMEOUT_SECONDS": "1",
    "ORDER_RATE_LIMIT_PER_MINUTE": "0",
}
STEPS = ["validate_payment", "reserve_inventory", "send_confirmation"]


@pytest.fixture
def customer():
    return get_user_model().objects.create_user("ada", email="ada@example.com", password="unused-pass-123")


@pytest.fixture
def headers(customer) -> dict[str, str]:
    _, token = ApiToken.issue(customer)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def products() -> dict[str, Product]:
    return {
        "LAMP": Product.objects.create(sku="LAMP", name="Desk lamp", price=Decimal("24.50"), stock=5),
        "MUG": Product.objects.create(sku="MUG", name="Mug", price=Decimal("8.00"), stock=10),
    }


@pytest.fixture
def shop(start_web, start_worker, start_relay, smtp_server, broker):
    """Web (API + sandbox gateway), a critical worker pointed at both, the relay for retries."""
    _, web = start_web(env=FAST)

    def start_workers(count: int = 1, concurrency: int = 1, extra: dict | None = None):
        env = {
            **FAST,
            **smtp_server.env,
            "PAYMENT_GATEWAY_URL": f"{web}/sandbox/payments/charges",
            **(extra or {}),
        }
        return [start_worker("critical", name=f"critical-{n}", concurrency=concurrency, env=env) for n in range(count)]

    start_relay()
    return {"web": web, "inbox": smtp_server.inbox, "start_workers": start_workers}


def place(web: str, headers: dict, items: list[dict], token: str = "tok_ok") -> requests.Response:  # noqa: S107 - a test card
    return requests.post(
        f"{web}/api/orders", json={"items": items, "payment_token": token}, headers=headers, timeout=TIMEOUT
    )


def wait_for_order(order_id, *statuses: str, timeout: float = 60) -> Order:
    return wait_until(
        lambda: Order.objects.filter(pk=order_id, status__in=statuses).first(),
        timeout=timeout,
        what=f"order {order_id} to reach {statuses}",
    )


def step_jobs(order: Order) -> dict[str, Job]:
    return {step.name: Job.objects.get(pk=step.job_id) for step in order.steps.all()}


def settled_steps(order_id, timeout: float = 60) -> dict[str, Job]:
    """The order's jobs once none of them will change any more."""
    order = Order.objects.get(pk=order_id)
    return wait_until(
        lambda: (jobs := step_jobs(order)) and all(job.finished for job in jobs.values()) and jobs,
        timeout=timeout,
        what=f"the steps of order {order_id} to finish",
    )


def outcomes(job: Job) -> list[str]:
    return list(job.attempt_history.order_by("number").values_list("outcome", flat=True))


# --- the happy path ---------------------------------------------------------------------------------


def test_an_order_is_paid_reserved_and_confirmed_by_its_workflow(shop, headers, products, customer):
    shop["start_workers"]()

    response = place(shop["web"], headers, [{"sku": "LAMP", "quantity": 2}, {"sku": "MUG", "quantity": 1}])

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert [job["step"] for job in body["jobs"]] == STEPS
    # Only the first step may run now; the others wait for the one before.
    assert [job["state"] for job in body["jobs"][1:]] == ["waiting", "waiting"]

    order = wait_for_order(body["id"], "confirmed")
    jobs = settled_steps(order.pk)
    assert {name: job.state for name, job in jobs.items()} == dict.fromkeys(STEPS, "succeeded")
    assert all(job.worker.startswith("critical-0@") and job.queue == "critical" for job in jobs.values())
    # Each step started only after the one before it had succeeded.
    assert jobs["validate_payment"].finished_at <= jobs["reserve_inventory"].started_at
    assert jobs["reserve_inventory"].finished_at <= jobs["send_confirmation"].started_at
    assert order.total == Decimal("57.00")
    assert order.payment_reference.startswith("ch_")
    assert order.paid_at and order.reserved_at and order.confirmed_at
    assert {sku: Product.objects.get(sku=sku).stock for sku in products} == {"LAMP": 3, "MUG": 9}

    [mail] = wait_until(lambda: shop["inbox"].to("ada@example.com"), timeout=10, what="the confirmation e-mail")
    assert mail["Subject"] == f"Your order {str(order.pk)[:8]} is confirmed"
    assert "2 x Desk lamp (LAMP)" in mail.get_content()
    assert "57.00" in mail.get_content()

    shown = requests.get(f"{shop['web']}/api/orders/{order.pk}", headers=headers, timeout=TIMEOUT).json()
    assert shown["status"] == "confirmed"
    assert [(step["step"], step["state"], step["attempts"]) for step in shown["steps"]] == [
        (name, "succeeded", 1) for name in STEPS
    ]


# --- payment failures -------------------------------------------------------------------------------


def test_a_declined_payment_fails_the_order_at_once_and_nothing_else_runs(shop, headers, products):
    shop["start_workers"]()

    order_id = place(shop["web"], headers, [{"sku": "LAMP", "quantity": 1}], token="tok_decline").json()["id"]

    order = wait_for_order(order_id, "failed")
    jobs = settled_steps(order_id)
    validate = jobs["validate_payment"]
    assert (validate.state, validate.attempts) == ("dead", 1)  # permanent: no retry
    assert "payment declined: the card was declined" in validate.error
    assert jobs["reserve_inventory"].state == jobs["send_confirmation"].state == "cancelled"
    assert jobs["reserve_inventory"].attempts == jobs["send_confirmation"].attempts == 0
    assert order.failure_reason.startswith("Validate payment: PaymentDeclined: payment declined")
    assert Product.objects.get(sku="LAMP").stock == 5
    assert shop["inbox"].messages == []


def test_a_flaky_gateway_is_retried_and_the_third_try_pays(shop, headers, products):
    shop["start_workers"]()

    order_id = place(shop["web"], headers, [{"sku": "MUG", "quantity": 3}], token="tok_flaky").json()["id"]

    wait_for_order(order_id, "confirmed", timeout=45)
    validate = settled_steps(order_id)["validate_payment"]
    assert validate.attempts == 3
    assert outcomes(validate) == ["failed", "failed", "succeeded"]
    assert "the gateway answered 503" in validate.attempt_history.get(number=1).error
    assert Product.objects.get(sku="MUG").stock == 7


def test_a_gateway_that_never_answers_in_time_fails_the_order_after_two_retries(shop, headers, products):
    shop["start_workers"]()

    order_id = place(shop["web"], headers, [{"sku": "MUG", "quantity": 1}], token="tok_slow").json()["id"]

    order = wait_for_order(order_id, "failed", timeout=60)
    validate = settled_steps(order_id)["validate_payment"]
    assert (validate.state, validate.attempts) == ("dead", 3)
    assert "did not answer within 1s" in validate.error
    assert "gave up after 3 attempts" in order.failure_reason
    assert Product.objects.get(sku="MUG").stock == 10


def test_the_sandbox_gateway_wants_its_key(shop):
    url = f"{shop['web']}/sandbox/payments/charges"
    body = {"token": "tok_ok", "amount": "1.00", "currency": "EUR"}
    refused = requests.post(url, json=body, headers={"Idempotency-Key": "k"}, timeout=TIMEOUT)
    assert refused.status_code == 401
    approved = requests.post(
        url, json=body, headers={"Idempotency-Key": "k", "Authorization": "Bearer sandbox-key"}, timeout=TIMEOUT
    )
    assert approved.json()["status"] == "approved"


# --- bad orders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "status", "code", "field"),
    [
        # The catalogue's state, which no schema states: 409.
        ([{"sku": "NOPE", "quantity": 1}], 409, "unknown_sku", "items.0.sku"),
        (
            [{"sku": "MUG", "quantity": 1}, {"sku": "LAMP", "quantity": 6}],
            409,
            "insufficient_stock",
            "items.1.quantity",
        ),
        # Outside the schema: 422.
        ([{"sku": "LAMP", "quantity": 0}], 422, "invalid_request", "items.0.quantity"),
        ([{"sku": "LAMP", "quantity": "1"}], 422, "invalid_request", "items.0.quantity"),
        ([{"sku": "LAMP", "quantity": True}], 422, "invalid_request", "items.0.quantity"),
        ([{"sku": "LAMP", "quantity": 1, "colour": "red"}], 422, "invalid_request", "items.0.colour"),
        ([{"sku": "LA\u0007MP", "quantity": 1}], 422, "invalid_request", "items.0.sku"),
        ([], 422, "invalid_request", "items"),
    ],
)
def test_a_bad_order_is_refused_naming_the_problem_and_saves_nothing(
    client, headers, products, items, status, code, field
):
    response = client.post(
        "/api/orders",
        {"items": items, "payment_token": "tok_ok"},
        content_type="application/json",
        headers=headers,
    )

    assert response.status_code == status, response.content
    assert response.json()["code"] == code
    assert field in [error["field"] for error in response.json()["errors"]]
    assert Order.objects.count() == Job.objects.count() == 0


def test_a_whole_float_is_a_quantity_and_an_order_needs_an_email(client, headers, products, broker):
    """2.0 is an integer to JSON Schema, so the API takes it; an account without an e-mail and an
    order without one is a state (409), the order being well formed."""
    body = {"items": [{"sku": "MUG", "quantity": 2.0}], "payment_token": "tok_ok"}
    placed = client.post("/api/orders", body, content_type="application/json", headers=headers)
    assert placed.status_code == 202, placed.content
    assert Order.objects.get(pk=placed.json()["id"]).items.get().quantity == 2

    no_email = get_user_model().objects.create_user("no-mail")
    _, token = ApiToken.issue(no_email)
    refused = client.post(
        "/api/orders", body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )
    assert (refused.status_code, refused.json()["code"]) == (409, "email_required")
    assert not Order.objects.filter(customer=no_email).exists()


def test_orders_need_credentials_and_customers_see_only_their_own(client, headers, products, customer):
    assert client.post("/api/orders", {}, content_type="application/json").status_code == 401
    someone = get_user_model().objects.create_user("bob", email="bob@example.com")
    theirs = Order.objects.create(customer=someone, email="bob@example.com", payment_token="tok_ok")

    response = client.get(f"/api/orders/{theirs.pk}", headers=headers)

    assert response.status_code == 404
    assert response.json() == {"detail": "not found", "code": "not_found"}


# --- stock under concurrency, lost workers ------------------------------------------------------------


def test_fifty_concurrent_orders_for_the_last_ten_units_confirm_ten(shop, headers, products):
    Product.objects.filter(sku="LAMP").update(stock=10)

    # The workers start once every order is in: with them running, the tenth reservation could land
    # before the last orders are placed, which the API would then refuse as out of stock.
    with ThreadPoolExecutor(max_workers=25) as pool:
        responses = list(pool.map(lambda _: place(shop["web"], headers, [{"sku": "LAMP", "quantity": 1}]), range(50)))
    assert [response.status_code for response in responses] == [202] * 50
    shop["start_workers"](count=2, concurrency=2)

    ids = [response.json()["id"] for response in responses]
    wait_until(
        lambda: Order.objects.filter(pk__in=ids, status__in=["confirmed", "failed"]).count() == 50,
        timeout=120,
        what="all 50 orders to be confirmed or failed",
    )
    statuses = list(Order.objects.filter(pk__in=ids).values_list("status", flat=True))
    assert statuses.count("confirmed") == 10
    assert statuses.count("failed") == 40
    assert Product.objects.get(sku="LAMP").stock == 0
    failed = Order.objects.filter(pk__in=ids, status="failed")
    assert all(reason.startswith("Reserve inventory: OutOfStock: out of stock: LAMP (0 left, 1 needed)") for reason in
               failed.values_list("failure_reason", flat=True))  # fmt: skip
    wait_until(lambda: len(shop["inbox"].messages) == 10, timeout=30, what="ten confirmation e-mails")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks held across processes: PostgreSQL")
def test_a_worker_killed_during_reserve_inventory_reserves_once(shop, headers, products):
    [worker] = shop["start_workers"]()
    locked, release = threading.Event(), threading.Event()

    def hold_the_lamp_row() -> None:
        # Holds the product's row lock, so the reservation blocks half way through its transaction.
        with transaction.atomic():
            Product.objects.select_for_update(no_key=True).get(sku="LAMP")
            locked.set()
            release.wait(60)
        connection.close()

    holder = threading.Thread(target=hold_the_lamp_row)
    holder.start()
    try:
        locked.wait(10)
        order_id = place(shop["web"], headers, [{"sku": "LAMP", "quantity": 2}]).json()["id"]
        reserve = Job.objects.get(order_step__order_id=order_id, order_step__name="reserve_inventory")
        wait_until(
            lambda: JobAttempt.objects.filter(job=reserve, number=1, outcome="running").exists(),
            timeout=20,
            what="the reservation to start",
        )
        wait_until(lambda: _waits_for_a_lock(), timeout=10, what="the reservation to wait for the row lock")

        [child] = psutil.Process(worker.pid).children()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # The message goes back to the queue and another pool process runs the step again.
        wait_until(
            lambda: JobAttempt.objects.filter(job=reserve, number=2).exists(), timeout=30, what="the second attempt"
        )
    finally:
        release.set()
        holder.join(10)

    order = wait_for_order(order_id, "confirmed")
    reserve.refresh_from_db()
    assert outcomes(reserve) == ["lost", "succeeded"]
    assert Product.objects.get(sku="LAMP").stock == 3  # 5 - 2, once
    assert order.reserved_at is not None


def _waits_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_reserving_twice_reserves_once(products, customer):
    order = Order.objects.create(
        customer=customer, email="ada@example.com", payment_token="tok_ok", paid_at="2026-01-01T00:00Z"
    )
    order.items.create(product=products["MUG"], quantity=4, unit_price=Decimal("8.00"))

    first = order_reserve_inventory(order_id=order.pk)
    again = order_reserve_inventory(order_id=order.pk)

    assert first["units"] == 4
    assert again["already"] is True
    assert Product.objects.get(sku="MUG").stock == 6


# --- recovery: retry a failed step, cancel an order ------------------------------------------------------


def test_retrying_the_step_that_failed_resumes_the_order(shop, headers, products):
    order_id = place(shop["web"], headers, [{"sku": "LAMP", "quantity": 2}]).json()["id"]
    Product.objects.filter(sku="LAMP").update(stock=1)  # sold elsewhere before the reservation ran
    shop["start_workers"]()

    wait_for_order(order_id, "failed")
    jobs = settled_steps(order_id)
    assert (jobs["reserve_inventory"].state, jobs["send_confirmation"].state) == ("dead", "cancelled")

    Product.objects.filter(sku="LAMP").update(stock=4)  # restocked
    retried = requests.post(
        f"{shop['web']}/api/jobs/{jobs['reserve_inventory'].pk}/retry", headers=headers, timeout=TIMEOUT
    )
    assert retried.status_code == 202

    order = wait_for_order(order_id, "confirmed")
    jobs = settled_steps(order_id)
    assert {name: job.state for name, job in jobs.items()} == dict.fromkeys(STEPS, "succeeded")
    assert order.failure_reason == ""
    assert Product.objects.get(sku="LAMP").stock == 2


def test_cancelling_a_reserved_order_puts_its_stock_back(shop, headers, products):
    # Mail cannot go out (nothing listens there): the order stays reserved, retrying its confirmation.
    shop["start_workers"](extra={"EMAIL_PORT": str(free_port())})
    order_id = place(shop["web"], headers, [{"sku": "MUG", "quantity": 4}]).json()["id"]
    wait_for_order(order_id, "reserved")
    assert Product.objects.get(sku="MUG").stock == 6

    response = requests.post(f"{shop['web']}/api/orders/{order_id}/cancel", headers=headers, timeout=TIMEOUT)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    jobs = settled_steps(order_id)
    assert jobs["send_confirmation"].state == "cancelled"
    assert Product.objects.get(sku="MUG").stock == 10
    again = requests.post(f"{shop['web']}/api/orders/{order_id}/cancel", headers=headers, timeout=TIMEOUT)
    assert (again.status_code, again.json()["code"]) == (409, "not_cancellable")


# --- order events reach webhooks ---------------------------------------------------------------------


def test_an_orders_status_changes_reach_the_subscribed_webhook_in_order(shop, headers, products, start_worker):
    receiver = HttpReceiver().start()
    try:
        WebhookEndpoint.objects.create(
            name="erp", url=f"{receiver.url}/orders", event_types=["order.paid", "order.confirmed", "order.failed"]
        )
        shop["start_workers"]()
        start_worker("default")  # deliveries

        order_id = place(shop["web"], headers, [{"sku": "MUG", "quantity": 1}]).json()["id"]

        wait_for_order(order_id, "confirmed")
        received = receiver.wait_for(2, path="/orders")
    finally:
        receiver.stop()
    events = sorted((json.loads(request.body) for request in received), key=lambda body: body["created_at"])
    assert [(body["event"], body["data"]["id"], body["data"]["status"]) for body in events] == [
        ("order.paid", order_id, "paid"),
        ("order.confirmed", order_id, "confirmed"),
    ]  # order.reserved is not subscribed


def test_admin_cancels_the_selected_orders_and_says_which_it_could_not(admin_client, products, customer, broker):
    open_order = Order.objects.create(customer=customer, email="ada@example.com", payment_token="tok_ok")
    done = Order.objects.create(customer=customer, email="ada@example.com", payment_token="tok_ok", status="confirmed")

    response = admin_client.post(
        "/admin/tasks/order/",
        {"action": "cancel_orders", "_selected_action": [open_order.pk, done.pk]},
        follow=True,
    )

    shown = [str(message) for message in response.context["messages"]]
    assert "1 order(s) cancelled." in shown
    assert any(text.startswith("Not changed: ") and str(done.pk) in text for text in shown)
    assert list(Order.objects.order_by("status").values_list("status", flat=True)) == ["cancelled", "confirmed"]


def test_customers_list_their_own_orders_page_by_page(client, headers, products, customer):
    someone = get_user_model().objects.create_user("bob", email="bob@example.com")
    Order.objects.create(customer=someone, email="bob@example.com", payment_token="tok_ok")
    mine = [Order.objects.create(customer=customer, email="ada@example.com", payment_token="tok_ok") for _ in range(3)]

    first = client.get("/api/orders?page_size=2", headers=headers).json()
    second = client.get("/api/orders?page_size=2&page=2", headers=headers).json()

    assert first["count"] == 3
    listed = [order["id"] for order in first["items"] + second["items"]]
    assert sorted(listed) == sorted(str(order.pk) for order in mine)
    assert first["items"][0]["url"] == f"/api/orders/{first['items'][0]['id']}"
