"""The local mail page (/mail/): a user reads the mail addressed to them, staff read all, anonymous
is sent to sign in, and without DEBUG or a mail directory there is no page at all."""

from __future__ import annotations

import mailbox
from email.message import EmailMessage
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tasks.orders.models import Order

pytestmark = pytest.mark.django_db


def deliver(
    directory: Path, *, to: str, subject: str, text: str, html: str | None = None, rcpt: str = "", at: float = 0
) -> str:
    """A message as the catcher keeps it (aiosmtpd's Mailbox adds the envelope's X-RcptTo), received ``at``."""
    message = EmailMessage()
    message["From"] = "shop@localhost"
    message["To"] = to
    message["Subject"] = subject
    message["X-RcptTo"] = rcpt or to
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    kept = mailbox.MaildirMessage(message)
    if at:
        kept.set_date(at)  # the file's time: when it arrived
    return mailbox.Maildir(directory).add(kept)


@pytest.fixture
def mail_dir(tmp_path: Path, settings) -> Path:
    settings.DEBUG = True
    settings.MAIL_CATCHER_DIR = tmp_path / "mail"
    return settings.MAIL_CATCHER_DIR


@pytest.fixture
def people() -> dict:
    User = get_user_model()
    return {
        "alice": User.objects.create_user("alice", email="Alice@Example.com"),
        "bob": User.objects.create_user("bob", email="bob@example.com"),
        "staff": User.objects.create_user("staff", email="staff@example.com", is_staff=True),
    }


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_user_reads_only_their_own_mail_and_staff_read_all(mail_dir, people):
    to_alice = deliver(mail_dir, to="alice@example.com", subject="Your order 1 is confirmed", text="Hello Alice")
    to_bob = deliver(mail_dir, to="bob@example.com", subject="Welcome, bob", text="Hello Bob")
    bcc_alice = deliver(mail_dir, to="list@example.com", subject="Newsletter", text="news", rcpt="alice@example.com")
    alice, staff = client_of(people["alice"]), client_of(people["staff"])

    alice_list = alice.get("/mail/").content.decode()
    staff_list = staff.get("/mail/").content.decode()

    assert "Your order 1 is confirmed" in alice_list and "Newsletter" in alice_list
    assert "Welcome, bob" not in alice_list and to_bob not in alice_list
    assert all(subject in staff_list for subject in ("Your order 1 is confirmed", "Welcome, bob", "Newsletter"))
    assert alice.get(f"/mail/{to_alice}").status_code == 200
    assert alice.get(f"/mail/{bcc_alice}").status_code == 200
    assert alice.get(f"/mail/{to_bob}").status_code == 404  # the same answer as no such message
    assert alice.get("/mail/no-such-message").status_code == 404
    assert staff.get(f"/mail/{to_bob}").status_code == 200


def test_the_list_is_newest_first_and_a_message_shows_its_headers_and_text_safely(mail_dir, people):
    newer = deliver(
        mail_dir,
        to="bob@example.com",
        subject="Second",
        text="two <b>plain</b>",
        html="<script>alert(1)</script>",
        at=1_000_000_100,
    )
    deliver(mail_dir, to="bob@example.com", subject="First", text="one", at=1_000_000_000)
    bob = client_of(people["bob"])

    listed = bob.get("/mail/").content.decode()
    shown = bob.get(f"/mail/{newer}").content.decode()

    assert listed.index("Second") < listed.index("First")
    assert "shop@localhost" in shown and "bob@example.com" in shown
    assert "two &lt;b&gt;plain&lt;/b&gt;" in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "<script>alert(1)" not in shown


def test_anonymous_is_sent_to_sign_in(mail_dir):
    for path in ("/mail/", "/mail/anything"):
        response = Client().get(path)
        assert response.status_code == 302
        assert response["Location"].startswith(f"/accounts/login/?next={path}")


@pytest.mark.parametrize("setting", ["DEBUG", "MAIL_CATCHER_DIR"])
def test_without_debug_or_a_mail_directory_there_is_no_page(mail_dir, people, settings, setting):
    key = deliver(mail_dir, to="staff@example.com", subject="Hidden", text="x")
    setattr(settings, setting, False if setting == "DEBUG" else None)
    staff = client_of(people["staff"])

    assert staff.get("/mail/").status_code == 404
    assert staff.get(f"/mail/{key}").status_code == 404
    assert Client().get("/mail/").status_code == 404  # not even a sign-in redirect
    assert "/mail/" not in staff.get("/orders/new").content.decode()  # and no link to it


def test_the_order_page_and_the_form_link_the_mail_page_when_it_is_on(mail_dir, people):
    order = Order.objects.create(customer=people["bob"], email="bob@example.com", payment_token="tok_ok")
    bob = client_of(people["bob"])

    order_page = bob.get(f"/orders/{order.pk}").content.decode()

    assert 'href="/mail/"' in bob.get("/orders/new").content.decode()
    assert 'id="order-mail"' in order_page and 'href="/mail/"' in order_page
