"""Placing an order in a real browser: the order form, then the order's page following its three
steps live (Server-Sent Events) to confirmed, without reloading."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from tasks.orders.models import Order, Product
from tests.support.browser import browser_page, log_in_to

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pass-123"
# Runs in the page before its own script: records each state a step cell shows.
RECORD_STEP_STATES = """
window.__stepStates = {};
new MutationObserver(function (records) {
  records.forEach(function (record) {
    var row = record.target.closest && record.target.closest("tr[data-step]");
    if (!row || !record.target.classList.contains("step-state")) { return; }
    var name = row.getAttribute("data-step");
    (window.__stepStates[name] = window.__stepStates[name] || []).push(record.target.getAttribute("data-state"));
  });
}).observe(document, { attributes: true, attributeFilter: ["data-state"], subtree: true });
"""


def test_an_order_placed_in_the_form_is_followed_live_to_confirmed(
    chromium, start_web, start_worker, smtp_server, broker
):
    get_user_model().objects.create_user("shopper", email="shopper@example.com", password=PASSWORD)
    Product.objects.create(sku="KETTLE", name="Kettle", price=Decimal("30.00"), stock=3)
    _, web = start_web()

    with browser_page(chromium, init_script=RECORD_STEP_STATES) as page:
        log_in_to(page, web, "/orders/new", username="shopper", password=PASSWORD)
        page.fill("input[name^=quantity_]", "2")
        page.select_option("select[name=payment_token]", "tok_ok")
        page.click("button[type=submit]")
        page.wait_for_url(f"{web}/orders/*")
        order_id = page.url.rsplit("/", 1)[1]
        page.evaluate("window.__samePage = true")  # gone if the page reloads
        assert page.text_content("#order-status") == "pending"
        assert page.text_content('tr[data-step="send_confirmation"] .step-state') == "waiting"

        start_worker(
            "critical",
            env={**smtp_server.env, "PAYMENT_GATEWAY_URL": f"{web}/sandbox/payments/charges"},
        )
        page.wait_for_function("document.getElementById('order-status').textContent === 'confirmed'", timeout=45_000)
        page.wait_for_function(
            "Array.from(document.querySelectorAll('.step-state')).every(c => c.textContent === 'succeeded')",
            timeout=15_000,
        )
        seen = page.evaluate("window.__stepStates")
        assert page.evaluate("window.__samePage === true")
        assert page.text_content("#order-live") == "Finished."

    # Every step was seen changing on the page, not only at the end.
    assert set(seen) == {"validate_payment", "reserve_inventory", "send_confirmation"}
    assert all(states[-1] == "succeeded" for states in seen.values())
    order = Order.objects.get(pk=order_id)
    assert (order.status, order.total) == ("confirmed", Decimal("60.00"))
    assert Product.objects.get(sku="KETTLE").stock == 1
