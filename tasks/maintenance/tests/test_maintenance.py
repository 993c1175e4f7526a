"""The shop's maintenance schedules: what they delete and alert, how they are seeded, beat firing one."""

import subprocess
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from project.celery import app
from tasks.maintenance.services import orders_alert_stuck_pending, orders_prune_cancelled
from tasks.orders.models import OpsAlert, Order, OrderItem, OrderStep, Product
from tasks.platform.models import Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tasks.platform.services.schedules import (
    ALERT_STUCK_ORDERS_SCHEDULE,
    PRUNE_CANCELLED_ORDERS_SCHEDULE,
    REPORT_RETENTION_SCHEDULE,
    RETENTION_SCHEDULE,
    SCHEDULES,
)
from tests.support.processes import BASE_DIR, BIN_DIR, ManagedProcess, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

STUCK = OpsAlert.Kind.ORDER_STUCK_PENDING


@pytest.fixture
def products() -> list[Product]:
    return [
        Product.objects.create(sku="MUG", name="Mug", price=Decimal("8.00"), stock=100),
        Product.objects.create(sku="TEE", name="T-shirt", price=Decimal("20.00"), stock=100),
    ]


@pytest.fixture
def make_order(user, products):
    """An order with two items, aged: created ``age`` ago, finished ``finished_ago`` ago (if given)."""

    def make(status: str, *, age: timedelta = timedelta(0), finished_ago: timedelta | None = None) -> Order:
        order = Order.objects.create(
            customer=user, email="dev@example.com", status=status, payment_token="tok_visa", total=Decimal("28.00")
        )
        for product in products:
            OrderItem.objects.create(order=order, product=product, quantity=1, unit_price=product.price)
        now = timezone.now()
        # created_at and updated_at are set by Django on save: age them with an update.
        Order.objects.filter(pk=order.pk).update(
            created_at=now - age,
            updated_at=now - (finished_ago if finished_ago is not None else age),
            finished_at=None if finished_ago is None else now - finished_ago,
        )
        order.refresh_from_db()
        return order

    return make


def order_ids(*orders: Order) -> set:
    return {order.pk for order in orders}


# --- pruning cancelled orders ---------------------------------------------------------------


def test_prune_deletes_only_cancelled_orders_past_retention_in_batches_with_their_items(make_order):
    old = timedelta(days=91)
    expired = [make_order(Order.Status.CANCELLED, age=old + timedelta(days=1), finished_ago=old) for _ in range(5)]
    # Cancelled before finished_at was recorded: its last change says how old it is.
    expired.append(make_order(Order.Status.CANCELLED, age=timedelta(days=200)))
    # A workflow step's job stays in the ledger (it has its own retention); the step goes with the order.
    step_job = Job.objects.create(task_name="orders.validate_payment", queue="critical", state=Job.State.SUCCEEDED)
    OrderStep.objects.create(order=expired[0], name=OrderStep.Name.VALIDATE_PAYMENT, position=0, job=step_job)
    kept = [
        make_order(Order.Status.CANCELLED, age=timedelta(days=100), finished_ago=timedelta(days=89)),
        make_order(Order.Status.CANCELLED, age=timedelta(days=1), finished_ago=timedelta(hours=1)),
        make_order(Order.Status.CONFIRMED, age=timedelta(days=300), finished_ago=timedelta(days=300)),
        make_order(Order.Status.FAILED, age=timedelta(days=300), finished_ago=timedelta(days=300)),
        make_order(Order.Status.PENDING, age=timedelta(days=300)),
    ]

    with CaptureQueriesContext(connection) as queries:
        deleted = orders_prune_cancelled(older_than=timedelta(days=90), batch_size=2)

    assert deleted == 6
    order_deletes = [q for q in queries.captured_queries if q["sql"].startswith('DELETE FROM "tasks_order" ')]
    assert len(order_deletes) == 3  # 6 orders, 2 a batch
    assert set(Order.objects.values_list("pk", flat=True)) == order_ids(*kept)
    assert not OrderItem.objects.filter(order_id__in=order_ids(*expired)).exists()
    assert OrderItem.objects.filter(order_id__in=order_ids(*kept)).count() == 2 * len(kept)
    assert not OrderStep.objects.exists()
    assert Job.objects.filter(pk=step_job.pk).exists()
    # Nothing left to do: a second run deletes nothing.
    assert orders_prune_cancelled(older_than=timedelta(days=90), batch_size=2) == 0


def test_prune_task_runs_through_a_real_worker(make_order, start_worker, wait_for_job):
    expired = [
        make_order(Order.Status.CANCELLED, age=timedelta(days=95), finished_ago=timedelta(days=days))
        for days in (91, 92)
    ]
    recent = make_order(Order.Status.CANCELLED, age=timedelta(days=5), finished_ago=timedelta(days=5))
    old_confirmed = make_order(Order.Status.CONFIRMED, age=timedelta(days=120), finished_ago=timedelta(days=120))
    start_worker(QueueName.DEFAULT)

    job = job_enqueue(task_name="orders.prune_cancelled", payload={"batch_size": 1})
    done = wait_for_job(job.id, Job.State.SUCCEEDED, Job.State.DEAD, Job.State.FAILED)

    assert done.state == Job.State.SUCCEEDED, done.error
    assert done.queue == QueueName.DEFAULT
    assert done.result == {"deleted": 2, "retention_days": 90}
    assert set(Order.objects.values_list("pk", flat=True)) == order_ids(recent, old_confirmed)
    assert not OrderItem.objects.filter(order_id__in=order_ids(*expired)).exists()


# --- alerting on orders stuck in pending ----------------------------------------------------


def run_alert_job(wait_for_job) -> Job:
    job = job_enqueue(task_name="orders.alert_stuck_pending")
    done = wait_for_job(job.id, Job.State.SUCCEEDED, Job.State.DEAD, Job.State.FAILED)
    assert done.state == Job.State.SUCCEEDED, done.error
    return done


def test_an_order_pending_too_long_raises_one_alert_and_a_warning_until_it_moves_on(
    make_order, start_worker, wait_for_job
):
    stuck = make_order(Order.Status.PENDING, age=timedelta(minutes=25))
    young = make_order(Order.Status.PENDING, age=timedelta(minutes=5))
    old_confirmed = make_order(Order.Status.CONFIRMED, age=timedelta(hours=2), finished_ago=timedelta(hours=2))
    worker = start_worker(QueueName.DEFAULT)

    first = run_alert_job(wait_for_job)

    assert first.queue == QueueName.DEFAULT
    assert first.result == {"raised": 1, "alert_after_minutes": 10}
    alert = OpsAlert.objects.get()
    assert (alert.kind, alert.subject, alert.resolved_at) == (STUCK, str(stuck.pk), None)
    assert "pending for 25 minutes" in alert.message
    assert not OpsAlert.objects.filter(subject__in=[str(young.pk), str(old_confirmed.pk)]).exists()
    warning = wait_until(
        lambda: [line for line in worker.log().splitlines() if "WARNING" in line and str(stuck.pk) in line],
        timeout=10,
        what="the worker's warning about the stuck order",
    )
    assert len(warning) == 1
    assert "stuck in pending for 25 minutes" in warning[0]
    assert str(young.pk) not in worker.log()

    # A minute later: the same order is not alerted again.
    second = run_alert_job(wait_for_job)
    assert second.result["raised"] == 0
    assert OpsAlert.objects.count() == 1
    assert len([line for line in worker.log().splitlines() if "WARNING" in line and str(stuck.pk) in line]) == 1

    # The order is confirmed at last: the next run resolves its alert, and raises none.
    Order.objects.filter(pk=stuck.pk).update(status=Order.Status.CONFIRMED, finished_at=timezone.now())
    third = run_alert_job(wait_for_job)
    assert third.result["raised"] == 0
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert OpsAlert.objects.count() == 1


def test_alerts_of_deleted_orders_are_resolved_and_a_resolved_alert_is_not_raised_again(make_order):
    gone = make_order(Order.Status.PENDING, age=timedelta(minutes=30))
    acknowledged = make_order(Order.Status.PENDING, age=timedelta(minutes=30))
    raised = orders_alert_stuck_pending(older_than=timedelta(minutes=10))
    assert {alert.subject for alert in raised} == {str(gone.pk), str(acknowledged.pk)}

    Order.objects.filter(pk=gone.pk).delete()
    # Ops marked this one resolved in admin while the order is still pending: it stays quiet.
    OpsAlert.objects.filter(subject=str(acknowledged.pk)).update(resolved_at=timezone.now())
    assert orders_alert_stuck_pending(older_than=timedelta(minutes=10)) == []

    assert OpsAlert.objects.get(subject=str(gone.pk)).resolved_at is not None
    assert OpsAlert.objects.filter(kind=STUCK).count() == 2


def test_a_backlog_of_stuck_orders_is_alerted_a_run_at_a_time_oldest_first(make_order, monkeypatch):
    monkeypatch.setattr("tasks.maintenance.services.MAX_ALERTS_PER_RUN", 2)
    backlog = [make_order(Order.Status.PENDING, age=timedelta(minutes=60 - i)) for i in range(5)]

    runs = [orders_alert_stuck_pending(older_than=timedelta(minutes=10)) for _ in range(4)]

    # Already alerted orders never crowd out the newer ones.
    assert [[alert.subject for alert in run] for run in runs] == [
        [str(backlog[0].pk), str(backlog[1].pk)],
        [str(backlog[2].pk), str(backlog[3].pk)],
        [str(backlog[4].pk)],
        [],
    ]
    assert OpsAlert.objects.filter(kind=STUCK, resolved_at__isnull=True).count() == 5


# --- seeding the schedules --------------------------------------------------------------------


def seed_schedules(process_env) -> str:
    """`manage.py seed_schedules` as an operator runs it."""
    argv = [str(BIN_DIR / "python"), "manage.py", "seed_schedules"]
    done = subprocess.run(argv, cwd=BASE_DIR, env=process_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_migrate_seeds_the_four_schedules():
    retention = PeriodicTask.objects.get(name=RETENTION_SCHEDULE)
    reports = PeriodicTask.objects.get(name=REPORT_RETENTION_SCHEDULE)
    prune = PeriodicTask.objects.get(name=PRUNE_CANCELLED_ORDERS_SCHEDULE)
    alert = PeriodicTask.objects.get(name=ALERT_STUCK_ORDERS_SCHEDULE)

    assert all(schedule.enabled and schedule.description for schedule in (retention, reports, prune, alert))
    assert all(schedule.task in app.tasks for schedule in (retention, reports, prune, alert))
    assert (retention.task, reports.task) == ("jobs.prune_finished", "reports.prune")
    assert retention.queue == reports.queue == QueueName.BULK
    assert (prune.task, alert.task) == ("orders.prune_cancelled", "orders.alert_stuck_pending")
    crontab = prune.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week, str(crontab.timezone)) == ("0", "2", "*", "UTC")
    assert (alert.interval.every, alert.interval.period) == (60, IntervalSchedule.SECONDS)
    assert prune.queue == alert.queue == QueueName.DEFAULT


def test_reseeding_keeps_an_admins_edits_and_never_duplicates(process_env):
    later, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="4", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    prune = PeriodicTask.objects.get(name=PRUNE_CANCELLED_ORDERS_SCHEDULE)
    prune.crontab = later
    prune.save()
    every_five_minutes, _ = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.MINUTES)
    alert = PeriodicTask.objects.get(name=ALERT_STUCK_ORDERS_SCHEDULE)
    alert.interval, alert.enabled = every_five_minutes, False
    alert.save()
    PeriodicTask.objects.filter(name=RETENTION_SCHEDULE).delete()  # deleted: the next seeding brings it back
    schedules_before = (CrontabSchedule.objects.count(), IntervalSchedule.objects.count())

    first = seed_schedules(process_env)
    second = seed_schedules(process_env)

    assert f"created: {RETENTION_SCHEDULE}" in first
    assert f"kept:    {PRUNE_CANCELLED_ORDERS_SCHEDULE}" in first
    assert f"kept:    {ALERT_STUCK_ORDERS_SCHEDULE}" in first
    assert f"kept:    {REPORT_RETENTION_SCHEDULE}" in first
    assert "created" not in second
    assert second.count("kept:") == len(SCHEDULES)  # the platform's own too
    names = [RETENTION_SCHEDULE, REPORT_RETENTION_SCHEDULE, PRUNE_CANCELLED_ORDERS_SCHEDULE]
    names.append(ALERT_STUCK_ORDERS_SCHEDULE)
    assert PeriodicTask.objects.filter(name__in=names).count() == 4
    prune.refresh_from_db()
    alert.refresh_from_db()
    assert prune.crontab_id == later.pk
    assert (alert.interval_id, alert.enabled) == (every_five_minutes.pk, False)
    assert PeriodicTask.objects.get(name=RETENTION_SCHEDULE).enabled
    # Only the recreated schedule could need a timing row (its 03:17 crontab still exists): none added.
    assert (CrontabSchedule.objects.count(), IntervalSchedule.objects.count()) == schedules_before


# --- beat firing the stuck-order check ------------------------------------------------------


def test_beat_fires_the_stuck_order_check_through_a_worker(make_order, process_env, start_worker):
    stuck = make_order(Order.Status.PENDING, age=timedelta(minutes=15))
    every_two_seconds, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    schedule = PeriodicTask.objects.get(name=ALERT_STUCK_ORDERS_SCHEDULE)
    schedule.interval = every_two_seconds
    schedule.save()
    start_worker(QueueName.DEFAULT)
    beat = ManagedProcess([str(BIN_DIR / "celery"), "-A", "project", "beat"], process_env, "beat").start()
    origin = f"beat:{ALERT_STUCK_ORDERS_SCHEDULE}"
    try:
        fired = wait_until(
            lambda: Job.objects.filter(origin=origin, state=Job.State.SUCCEEDED).order_by("created_at").first(),
            timeout=45,
            what="beat to fire the stuck-order check",
        )
        # It keeps firing, and the later runs raise nothing new.
        wait_until(
            lambda: Job.objects.filter(origin=origin, state=Job.State.SUCCEEDED).count() >= 2,
            timeout=30,
            what="beat to fire the check again",
        )
    finally:
        beat.stop()

    assert fired.task_name == "orders.alert_stuck_pending"
    assert fired.queue == QueueName.DEFAULT
    assert fired.result == {"raised": 1, "alert_after_minutes": 10}
    assert list(OpsAlert.objects.values_list("subject", flat=True)) == [str(stuck.pk)]
    assert (
        not Job.objects.filter(origin=origin)
        .exclude(state=Job.State.SUCCEEDED)
        .exclude(state=Job.State.STARTED)
        .exists()
    )


# --- admin -------------------------------------------------------------------------------------


def test_admin_lists_open_alerts_and_marks_the_selected_resolved(make_order, admin_client, static_files):
    first, second = (make_order(Order.Status.PENDING, age=timedelta(minutes=40)) for _ in range(2))
    orders_alert_stuck_pending(older_than=timedelta(minutes=10))
    changelist = reverse("admin:tasks_opsalert_changelist")

    listing = admin_client.get(changelist, {"kind__exact": STUCK, "resolved": "no"})
    assert listing.status_code == 200
    assert str(first.pk).encode() in listing.content and str(second.pk).encode() in listing.content

    chosen = OpsAlert.objects.get(subject=str(first.pk))
    response = admin_client.post(
        changelist, {"action": "mark_resolved", "_selected_action": [str(chosen.pk)]}, follow=True
    )

    assert [str(message) for message in response.context["messages"]] == ["1 alert(s) marked resolved."]
    chosen.refresh_from_db()
    assert chosen.resolved_at is not None
    assert OpsAlert.objects.get(subject=str(second.pk)).resolved_at is None
    still_open = admin_client.get(changelist, {"resolved": "no"})
    assert str(first.pk).encode() not in still_open.content
    assert str(second.pk).encode() in still_open.content
