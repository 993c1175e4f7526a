"""Reading the mail the local catcher kept (a Maildir, MAIL_CATCHER_DIR) on a user's behalf: a user
sees the messages addressed to their own e-mail address, staff see all."""

from __future__ import annotations

import email
import email.policy
import mailbox
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

#: most messages the list shows (the newest)
LIST_LIMIT = 200
#: headers that name a recipient: the message's own, and the envelope's as the catcher recorded it
_RECIPIENT_HEADERS = ("To", "Cc", "X-RcptTo")


@dataclass(frozen=True)
class CaughtMail:
    key: str
    received: datetime
    message: EmailMessage

    @property
    def recipients(self) -> set[str]:
        values = [str(value) for name in _RECIPIENT_HEADERS for value in self.message.get_all(name, [])]
        return {address.lower() for _, address in getaddresses(values) if address}

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return ", ".join(str(value) for value in self.message.get_all("To", []))

    @property
    def shown_headers(self) -> list[tuple[str, str]]:
        """The headers a reader looks at, those present, in this order."""
        names = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
        return [(name, str(self.message[name])) for name in names if self.message[name] is not None]

    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""

    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else ""


def _visible(mail: CaughtMail, user) -> bool:
    return user.is_staff or (bool(user.email) and user.email.lower() in mail.recipients)


def _box(directory: Path) -> mailbox.Maildir | None:
    try:
        return mailbox.Maildir(directory, factory=None, create=False)
    except mailbox.NoSuchMailboxError:  # the catcher has not started yet
        return None


def _read(box: mailbox.Maildir, key: str) -> CaughtMail:
    received = datetime.fromtimestamp(box.get_message(key).get_date(), tz=UTC)
    message = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
    return CaughtMail(key, received, message)


def mail_list_visible(*, directory: Path, user) -> list[CaughtMail]:
    """The messages ``user`` may read, newest first."""
    box = _box(directory)
    if box is None:
        return []
    caught = []
    for key in box.iterkeys():
        try:
            mail = _read(box, key)
        except KeyError:  # removed since listed
            continue
        if _visible(mail, user):
            caught.append(mail)
    caught.sort(key=lambda mail: (mail.received, mail.key), reverse=True)
    return caught[:LIST_LIMIT]


def mail_get_visible(*, directory: Path, user, key: str) -> CaughtMail | None:
    """The message, or None when there is no such message or ``user`` may not read it (one answer)."""
    box = _box(directory)
    if box is None:
        return None
    try:
        mail = _read(box, key)
    except KeyError:
        return None
    return mail if _visible(mail, user) else None
