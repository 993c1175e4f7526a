"""A sandbox payment gateway, served by the web app when PAYMENT_SANDBOX is on (local runs, tests).

It speaks the contract of tasks.orders.services.payments. Test tokens, as card processors offer test
cards: ``tok_ok`` approves; ``tok_decline`` declines; ``tok_flaky`` answers 503 to the first two
charges with an idempotency key and approves the third; ``tok_slow`` answers only after the
client's timeout (PAYMENT_GATEWAY_TIMEOUT_SECONDS + 1). Any other token is declined.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tasks.orders.services.payments import TOKEN_DECLINE, TOKEN_FLAKY, TOKEN_OK, TOKEN_SLOW
from tasks.platform.queues import async_redis_client

#: tok_flaky fails this many times per idempotency key before it approves
FLAKY_FAILURES = 2
#: how long the sandbox remembers a tok_flaky key
FLAKY_MEMORY_SECONDS = 3600


@csrf_exempt  # a server-to-server API authenticated by its bearer key, as a real gateway is
@require_POST
async def sandbox_charge(request: HttpRequest) -> JsonResponse:
    expected = f"Bearer {settings.PAYMENT_GATEWAY_API_KEY}"
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected.encode()):
        return JsonResponse({"message": "invalid API key"}, status=401)
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return JsonResponse({"message": "an Idempotency-Key header is required"}, status=400)
    try:
        body = json.loads(request.body)
        token = body["token"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"message": "a JSON body with a token is required"}, status=400)

    if token == TOKEN_SLOW:
        await asyncio.sleep(settings.PAYMENT_GATEWAY_TIMEOUT_SECONDS + 1)
    elif token == TOKEN_FLAKY and await _flaky_attempt(key) <= FLAKY_FAILURES:
        return JsonResponse({"message": "temporarily unavailable"}, status=503)
    elif token == TOKEN_DECLINE:
        return JsonResponse({"decline_code": "card_declined", "message": "the card was declined"}, status=402)
    elif token not in (TOKEN_OK, TOKEN_FLAKY):
        message = f"unknown test token {token!r:.40}"
        return JsonResponse({"decline_code": "invalid_token", "message": message}, status=402)
    # The same key always gives the same charge: a retried charge is one charge.
    charge_id = "ch_" + hashlib.sha256(key.encode()).hexdigest()[:24]
    return JsonResponse({"id": charge_id, "status": "approved"})


async def _flaky_attempt(key: str) -> int:
    """How many charges tok_flaky has seen with this key, this one included."""
    client = async_redis_client()
    try:
        name = f"sandbox:flaky:{key}"
        count = await client.incr(name)
        await client.expire(name, FLAKY_MEMORY_SECONDS)
        return count
    finally:
        await client.aclose()


urlpatterns = (
    [path("sandbox/payments/charges", sandbox_charge, name="sandbox_charge")] if settings.PAYMENT_SANDBOX else []
)
