"""A real SMTP server in the test process (aiosmtpd), receiving what worker processes send."""

from __future__ import annotations

import email
import email.policy
import logging
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.support.processes import free_port


@dataclass
class Inbox:
    """Collects every message delivered to the server, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [message for message in self.messages if address in str(message["To"])]


@dataclass
class SmtpServer:
    inbox: Inbox
    port: int

    @property
    def env(self) -> dict[str, str]:
        """What a platform process needs to send its mail here."""
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.port),
        }


def start_smtp_server() -> tuple[SmtpServer, Controller]:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # a line per SMTP command otherwise
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    return SmtpServer(inbox, port), controller
