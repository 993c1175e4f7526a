"""The payment gateway client: one charge per order, over HTTP, at PAYMENT_GATEWAY_URL.

The gateway's contract (the sandbox in tasks.orders.sandbox serves the same one):
``POST <url>`` with ``Authorization: Bearer <PAYMENT_GATEWAY_API_KEY>``, an ``Idempotency-Key``
header (the order id, so a retried charge is charged once) and JSON ``{"token", "amount",
"currency", "reference"}``. 200 ``{"id", "status": "approved"}`` approves; 402 ``{"decline_code",
"message"}`` declines. A timeout, a connection error, 429 or a 5xx says nothing about the card:
the caller retries. Any other answer is a permanent error (a bad key or request: retrying the
same request cannot mend it).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import requests
from django.conf import settings

from tasks.platform.errors import PermanentError

CURRENCY = "EUR"
# The sandbox gateway's test tokens (not secrets): the cards a sandbox offers.
TOKEN_OK, TOKEN_DECLINE, TOKEN_FLAKY, TOKEN_SLOW = "tok_ok", "tok_decline", "tok_flaky", "tok_slow"


class PaymentDeclined(PermanentError):
    """The gateway refused the card: the order fails, no retry."""


class GatewayUnavailable(Exception):
    """No verdict (timeout, connection error, 429 or 5xx): try again later."""


@dataclass(frozen=True)
class Charge:
    reference: str


def payment_charge(*, token: str, amount: Decimal, idempotency_key: str, reference: str) -> Charge:
    """Charge ``amount`` to ``token``; raises PaymentDeclined, GatewayUnavailable or PermanentError."""
    try:
        response = requests.post(
            settings.PAYMENT_GATEWAY_URL,
            json={"token": token, "amount": str(amount), "currency": CURRENCY, "reference": reference},
            headers={
                "Authorization": f"Bearer {settings.PAYMENT_GATEWAY_API_KEY}",
                "Idempotency-Key": idempotency_key,
            },
            timeout=settings.PAYMENT_GATEWAY_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
    except requests.Timeout as exc:
        waited = settings.PAYMENT_GATEWAY_TIMEOUT_SECONDS
        raise GatewayUnavailable(f"the gateway did not answer within {waited}s") from exc
    except requests.RequestException as exc:
        raise GatewayUnavailable(f"the gateway could not be reached: {exc}") from exc

    status = response.status_code
    if status == 200:
        body = _json(response)
        if body.get("status") == "approved" and body.get("id"):
            return Charge(reference=str(body["id"]))
        raise PermanentError(f"the gateway answered 200 without an approved charge: {body!r:.200}")
    if status == 402:
        body = _json(response)
        reason = body.get("message") or body.get("decline_code") or "no reason given"
        raise PaymentDeclined(f"payment declined: {reason}")
    if status == 429 or status >= 500:
        raise GatewayUnavailable(f"the gateway answered {status}")
    raise PermanentError(f"the gateway refused the request: HTTP {status} {response.text[:200]!r}")


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
