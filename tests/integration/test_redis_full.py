"""A full Redis under `noeviction` (docker-compose sets `maxmemory`): publishes are refused, the API
answers 503 and the ledger keeps the job pending; the relay publishes it once there is room again.

Why the policy stays `noeviction`: an evicting policy would make room by deleting keys, and the
broker's queue lists are keys: jobs would vanish without anyone being told.
"""

from __future__ import annotations

import pytest
import redis
import requests
from django.contrib.auth import get_user_model

from tasks.models import ApiToken, Job
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

FILLER_KEYS = 20
FILLER = b"x" * 100_000
#: maxmemory is set this far below what Redis then uses: no freed buffer brings it back under
MARGIN = 1_000_000


def test_a_full_redis_refuses_the_publish_and_the_relay_publishes_the_job_once_there_is_room(
    own_redis, start_web, start_relay
):
    client = redis.Redis.from_url(own_redis.url)
    _, token = ApiToken.issue(get_user_model().objects.create_superuser("ops", password="unused-pass-123"))
    _, base = start_web({"REDIS_URL": own_redis.url})
    for n in range(FILLER_KEYS):
        client.set(f"filler:{n}", FILLER)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] - MARGIN)
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        client.set("probe", "x")  # full: writes are refused

    response = requests.post(
        f"{base}/api/jobs", json={"task": "ops.ping"}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )

    assert response.status_code == 503, response.text
    body = response.json()
    assert (body["code"], body["state"]) == ("broker_unavailable", "pending")
    assert Job.objects.get(pk=body["id"]).state == Job.State.PENDING
    assert client.exists(*[f"filler:{n}" for n in range(FILLER_KEYS)]) == FILLER_KEYS  # nothing was evicted

    client.delete(*client.keys("filler:*"))
    start_relay(env={"REDIS_URL": own_redis.url})

    # Queued with its message owed, then sent: the outbox row goes once the message is out.
    wait_until(
        lambda: Job.objects.filter(pk=body["id"], state=Job.State.QUEUED, outbox__isnull=True).exists(),
        timeout=30,
        what="the relay to publish the job",
    )
    assert client.llen("default:5") == 1
