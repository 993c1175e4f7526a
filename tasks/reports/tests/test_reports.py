"""Sales reports: requested over HTTP, built as a PDF by a real bulk worker, downloaded and read back."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import redis
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from pypdf import PdfReader

from tasks.orders.models import Order, OrderItem, Product
from tasks.platform.models import ApiToken, Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tasks.reports.models import Report
from tasks.reports.services import BUILD_SALES_TASK, ReportRequestInvalid, report_build, report_request
from tests.fixtures import grant

pytestmark = pytest.mark.django_db(transaction=True)

DATE_FROM, DATE_TO = date(2024, 3, 1), date(2024, 3, 7)
DAYS = [DATE_FROM + timedelta(days=n) for n in range((DATE_TO - DATE_FROM).days + 1)]
#: confirmed orders per day index; 2024-03-04 has none, and must still be a row
ORDERS_PER_DAY = {0: 3, 1: 1, 2: 5, 4: 2, 5: 7, 6: 4}
DATE_ROW = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(autouse=True)
def may_ask_for_reports(user) -> None:
    """Reports need the permission to add them (their figures are the whole shop's revenue)."""
    grant(user, "add_report")


@pytest.fixture
def media(tmp_path, settings) -> str:
    """A media directory of the test's own, for this process, the worker and the web process."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return str(settings.MEDIA_ROOT)


def _at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def _orders(customer, product_a: Product, product_b: Product, placed: list[tuple[datetime, str, int, int]]):
    """Orders (created_at, status, units of A, units of B) in bulk; created_at set after the insert,
    since auto_now_add overrides it on insert."""
    orders = [
        Order(customer=customer, email="c@example.com", payment_token="tok_ok", status=status)
        for _, status, _, _ in placed
    ]
    Order.objects.bulk_create(orders)
    items = []
    for order, (created_at, _, units_a, units_b) in zip(orders, placed, strict=True):
        total = product_a.price * units_a + product_b.price * units_b
        Order.objects.filter(pk=order.pk).update(created_at=created_at, total=total)
        items.append(OrderItem(order=order, product=product_a, quantity=units_a, unit_price=product_a.price))
        if units_b:
            items.append(OrderItem(order=order, product=product_b, quantity=units_b, unit_price=product_b.price))
    OrderItem.objects.bulk_create(items)


@pytest.fixture
def sales() -> dict[date, tuple[int, int, Decimal]]:
    """Confirmed orders over the range, plus orders the report must leave out; returns the
    expected (orders, units, revenue) per day."""
    customer = get_user_model().objects.create_user("customer", password="unused-pass-123")
    product_a = Product.objects.create(sku="A", name="Widget", price=Decimal("10.00"), stock=0)
    product_b = Product.objects.create(sku="B", name="Gadget", price=Decimal("2.50"), stock=0)
    placed, expected = [], {}
    for index, day in enumerate(DAYS):
        count = ORDERS_PER_DAY.get(index, 0)
        units = revenue = 0
        for n in range(count):
            units_a, units_b = 1 + n % 3, n % 2
            # Spread over the day, the first at midnight and the last just before the next one.
            created = _at(day, 0) if n == 0 else _at(day, 23, 59, 59) if n == count - 1 else _at(day, 8 + n)
            placed.append((created, Order.Status.CONFIRMED, units_a, units_b))
            units += units_a + units_b
            revenue += product_a.price * units_a + product_b.price * units_b
        expected[day] = (count, units, Decimal(revenue))
    # Left out: not confirmed, or just outside the range.
    placed += [
        (_at(DAYS[0], 12), Order.Status.PENDING, 5, 0),
        (_at(DAYS[1], 12), Order.Status.CANCELLED, 5, 0),
        (_at(DAYS[2], 12), Order.Status.PAID, 5, 0),
        (_at(DATE_FROM - timedelta(days=1), 23, 59, 59), Order.Status.CONFIRMED, 9, 9),
        (_at(DATE_TO + timedelta(days=1), 0), Order.Status.CONFIRMED, 9, 9),
    ]
    _orders(customer, product_a, product_b, placed)
    return expected


def pdf_rows(pdf: bytes) -> tuple[list[tuple[str, int, int, Decimal]], tuple[int, int, Decimal]]:
    """The daily table read back from the PDF's text: its rows, and the total row."""
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    lines = [line.strip() for line in text.splitlines()]
    rows = []
    for index, line in enumerate(lines):
        if DATE_ROW.match(line):
            orders, units, revenue = lines[index + 1 : index + 4]
            rows.append((line, int(orders), int(units), Decimal(revenue.replace(",", ""))))
    total_at = lines.index("Total")
    orders, units, revenue = lines[total_at + 1 : total_at + 4]
    return rows, (int(orders), int(units), Decimal(revenue.replace(",", "")))


def bearer_headers(user) -> dict[str, str]:
    _, token = ApiToken.issue(user)
    return {"Authorization": f"Bearer {token}"}


class ProgressListener:
    """Every job event published on Redis while it listens (the same channel the SSE stream reads)."""

    def __init__(self) -> None:
        self.pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("jobs:*:events")
        self.pubsub.get_message(timeout=2)  # the subscription is confirmed before anything is enqueued
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                self.events.append(json.loads(message["data"]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()

    def progress_of(self, job_id) -> list[tuple[int, str]]:
        return [
            (e["progress"], e["message"]) for e in self.events if e["job"] == str(job_id) and e["type"] == "progress"
        ]


@pytest.fixture
def listener() -> Iterator[ProgressListener]:
    listening = ProgressListener()
    yield listening
    listening.close()


def test_a_report_is_built_on_the_bulk_worker_and_its_pdf_has_a_row_per_day(
    media, sales, user, start_worker, start_web, wait_for_job, listener
):
    env = {"MEDIA_ROOT": media}
    worker = start_worker(QueueName.BULK, env=env)
    _, base = start_web(env=env)
    owner = bearer_headers(user)

    answer = requests.post(
        f"{base}/api/reports", json={"date_from": str(DATE_FROM), "days": len(DAYS)}, headers=owner, timeout=10
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["url"] == f"/api/reports/{accepted['id']}"
    assert accepted["job_url"] == f"/api/jobs/{accepted['job_id']}"

    job = wait_for_job(accepted["job_id"], Job.State.SUCCEEDED, Job.State.DEAD, Job.State.FAILED)
    assert job.state == Job.State.SUCCEEDED, job.error
    # Ran on the bulk queue, by the bulk worker, in a prefork child (not the worker's main process).
    assert job.queue == QueueName.BULK and job.task_name == BUILD_SALES_TASK
    assert job.worker.startswith("bulk-test@")
    assert job.result["pid"] != worker.pid and job.result["peak_rss_kib"] > 0
    assert job.progress == 100

    # Progress was reported as the orders were counted, never going backwards.
    progress = listener.progress_of(job.id)
    percents = [percent for percent, _ in progress]
    assert percents == sorted(percents)
    assert any(0 < percent < 100 for percent in percents), progress
    assert any(message.startswith("counted ") for _, message in progress), progress

    status = requests.get(f"{base}{accepted['url']}", headers=owner, timeout=10).json()
    expected_orders = sum(orders for orders, _, _ in sales.values())
    expected_units = sum(units for _, units, _ in sales.values())
    expected_revenue = sum((revenue for _, _, revenue in sales.values()), Decimal("0"))
    assert status["state"] == "succeeded" and status["progress"] == 100
    assert (status["order_count"], status["unit_count"], status["row_count"]) == (
        expected_orders,
        expected_units,
        len(DAYS),
    )
    assert Decimal(status["revenue"]) == expected_revenue
    assert status["download_url"] == f"/reports/{accepted['id']}/download"

    download = requests.get(f"{base}{status['download_url']}", headers=owner, timeout=10)
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/pdf"
    assert f'filename="sales-report-{DATE_FROM}-to-{DATE_TO}.pdf"' in download.headers["Content-Disposition"]
    assert download.content.startswith(b"%PDF-")
    assert int(download.headers["Content-Length"]) == len(download.content)

    rows, total = pdf_rows(download.content)
    assert len(rows) == len(DAYS)  # one row per day of the range, days without sales included
    assert rows == [(str(day), *sales[day]) for day in DAYS]
    assert total == (expected_orders, expected_units, expected_revenue)

    # Only the owner (or staff) may read it: another user gets 404, no credentials 401.
    stranger = bearer_headers(get_user_model().objects.create_user("stranger", password="unused-pass-123"))
    assert requests.get(f"{base}{status['download_url']}", headers=stranger, timeout=10).status_code == 404
    assert requests.get(f"{base}{accepted['url']}", headers=stranger, timeout=10).json()["code"] == "not_found"
    anonymous = requests.get(f"{base}{status['download_url']}", timeout=10)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")
    assert requests.get(f"{base}{accepted['url']}", timeout=10).status_code == 401
    # Staff with the view permission of reports (the staff scope needs the model's permission).
    staff = grant(get_user_model().objects.create_user("ops", password="unused-pass-123", is_staff=True), "view_report")
    assert requests.get(f"{base}{status['download_url']}", headers=bearer_headers(staff), timeout=10).content == (
        download.content
    )
    # A browser session works as a bearer token does (the session lives in the shared database).
    browser = Client()
    browser.force_login(user)
    by_session = requests.get(
        f"{base}{status['download_url']}", cookies={"sessionid": browser.cookies["sessionid"].value}, timeout=10
    )
    assert (by_session.status_code, by_session.content) == (200, download.content)


def test_a_report_enqueued_on_another_queue_is_refused_there(media, sales, user, start_worker, wait_for_job):
    start_worker(QueueName.DEFAULT, env={"MEDIA_ROOT": media})
    report = Report.objects.create(owner=user, date_from=DATE_FROM, date_to=DATE_TO)
    job = job_enqueue(task_name=BUILD_SALES_TASK, payload={"report_id": str(report.pk)}, queue=QueueName.DEFAULT)
    Report.objects.filter(pk=report.pk).update(job=job)

    dead = wait_for_job(job.id, Job.State.DEAD, Job.State.SUCCEEDED, Job.State.FAILED)

    assert dead.state == Job.State.DEAD
    assert dead.worker.startswith("default-test@")
    assert "runs only on the bulk queue, not 'default'" in dead.error
    assert dead.attempts == 1  # permanent: not retried
    report.refresh_from_db()
    assert not report.ready and report.order_count is None


def test_the_range_is_checked_and_nothing_is_enqueued_for_a_bad_one(client, user, auth):
    cases = [
        ({"date_from": "2023-01-01", "days": 367}, "days"),
        ({"date_from": "2024-03-01", "days": 0}, "days"),
        ({"date_from": "2024-03-01", "days": "7"}, "days"),  # a string is not a number of days
        ({"date_from": "2024-03-01", "days": True}, "days"),
        ({"date_from": "2024-03-01", "date_to": "2024-03-07"}, "days,date_to"),  # the former shape
        ({"date_from": "2024-03-01", "days": 7, "date_to": "2024-03-07"}, "date_to"),  # date_to is no field any more
        ({"date_from": "2024-02-30", "days": 1}, "date_from"),
        ({"date_from": "2023-02-29", "days": 1}, "date_from"),  # not a leap year
        ({"date_from": "2100-02-29", "days": 1}, "date_from"),  # nor is 2100
        ({"date_from": "3000-01-01", "days": 1}, "date_from"),  # past the last start: 2999-12-31
        ({"date_from": "9999-12-31", "days": 366}, "date_from"),  # would end past year 9999
        ({"date_from": "1899-12-31", "days": 1}, "date_from"),
        ({"date_from": 1709251200, "days": 1}, "date_from"),  # a Unix time is not a date
        ({"date_from": "2024-03-01T00:00:00", "days": 1}, "date_from"),
        ({"date_from": "2024-03-01\n", "days": 1}, "date_from"),
    ]
    for body, field in cases:
        answer = client.post("/api/reports", json.dumps(body), content_type="application/json", **auth)
        assert answer.status_code == 422, (body, answer.content)
        assert answer.json()["code"] == "invalid_request"
        assert [error["field"] for error in answer.json()["errors"]] == field.split(","), body
    # The service and the model hold the same bounds as the schema.
    for date_from, days, field in [(date(3000, 1, 1), 1, "date_from"), (date(2024, 1, 1), 367, "days")]:
        with pytest.raises(ReportRequestInvalid) as refused:
            report_request(owner=user, date_from=date_from, days=days)
        assert refused.value.field == field
    with pytest.raises(ValidationError) as invalid:
        Report(owner=user, date_from=date(2024, 1, 1), date_to=date(2025, 1, 1)).clean()  # 367 days
    assert set(invalid.value.message_dict) == {"date_to"}
    assert not Report.objects.exists() and not Job.objects.exists()


@pytest.mark.parametrize(
    ("date_from", "days", "date_to"),
    [("2024-01-01", 366, "2024-12-31"), ("2024-02-29", 1, "2024-02-29"), ("2999-12-31", 366, "3000-12-31")],
    ids=["a-leap-year", "a-leap-day", "the-last-start"],
)
def test_a_range_within_the_bounds_is_accepted(client, auth, broker, date_from, days, date_to):
    answer = client.post(
        "/api/reports", json.dumps({"date_from": date_from, "days": days}), content_type="application/json", **auth
    )
    assert answer.status_code == 202, answer.content
    report = Report.objects.get(pk=answer.json()["id"])
    assert report.job.task_name == BUILD_SALES_TASK
    assert (str(report.date_from), str(report.date_to)) == (date_from, date_to)
    shown = client.get(answer.json()["url"], **auth).json()
    assert (shown["date_from"], shown["date_to"], shown["days"]) == (date_from, date_to, days)


def test_the_download_answers_409_until_the_report_is_built(client, user, auth, broker):
    report = report_request(owner=user, date_from=DATE_FROM, days=len(DAYS))  # no bulk worker runs

    answer = client.get(f"/reports/{report.pk}/download", **auth)

    assert (answer.status_code, answer.json()["code"]) == (409, "not_ready")
    status = client.get(f"/api/reports/{report.pk}", **auth).json()
    assert status["state"] == "queued" and status["download_url"] is None


def test_a_rebuild_overwrites_the_same_file_and_reports_progress(media, sales, user):
    """The service itself (a retry or a redelivery runs it again): same name, same figures."""
    report = Report.objects.create(owner=user, date_from=DATE_FROM, date_to=DATE_TO)
    reported: list[tuple[int, str]] = []

    first = report_build(report_id=report.pk, progress=lambda percent, message: reported.append((percent, message)))
    report.refresh_from_db()
    name, built_at = report.file.name, report.finished_at
    second = report_build(report_id=report.pk, progress=lambda percent, message: None)
    report.refresh_from_db()

    assert name == f"reports/{report.pk}.pdf" and report.file.name == name
    assert report.finished_at > built_at
    figures = ("orders", "units", "revenue", "rows")
    assert [first[key] for key in figures] == [second[key] for key in figures]
    assert sorted(p.name for p in (settings.MEDIA_ROOT / "reports").iterdir()) == [f"{report.pk}.pdf"]
    rows, _ = pdf_rows(report.file.read())
    assert len(rows) == len(DAYS) == report.row_count
    percents = [percent for percent, _ in reported]
    assert percents == sorted(percents) and percents[0] == 0 and len(set(percents)) > 5


def test_admin_and_the_list_show_a_built_report(media, sales, user, auth, client, admin_client, broker):
    report = report_request(owner=user, date_from=DATE_FROM, days=len(DAYS))
    report_build(report_id=report.pk, progress=lambda percent, message: None)  # as the worker would
    other = report_request(owner=get_user_model().objects.create_user("other"), date_from=DATE_TO, days=1)

    listed = client.get("/api/reports", **auth).json()
    assert listed["count"] == 1 and listed["items"][0]["id"] == str(report.pk)
    assert listed["items"][0]["download_url"] == f"/reports/{report.pk}/download"

    changelist = admin_client.get("/admin/tasks/report/", {"owner__id__exact": user.pk})
    assert changelist.status_code == 200
    page = changelist.content.decode()
    assert f"/reports/{report.pk}/download" in page and str(other.pk) not in page
    change = admin_client.get(f"/admin/tasks/report/{report.pk}/change/").content.decode()
    assert f"/admin/tasks/job/{report.job_id}/change/" in change
    assert f"/reports/{report.pk}/download" in change
