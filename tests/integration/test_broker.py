"""The platform's Redis transport (tasks.platform.broker): kombu's, with one client per channel."""

import uuid

import pytest

from project.celery import app
from tasks.platform.broker import Transport


def test_redis_urls_take_the_platforms_transport_and_read_as_before():
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.as_uri().startswith("redis://")


def test_a_channel_keeps_one_client_and_still_publishes_and_consumes(broker):
    queue = f"broker-test-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert channel._create_client() is channel._create_client()
        simple = connection.SimpleQueue(queue)
        try:
            for number in range(3):
                simple.put({"n": number})
            received = []
            for _ in range(3):
                message = simple.get(timeout=5)
                received.append(message.payload["n"])
                message.ack()
            assert received == [0, 1, 2]
            with pytest.raises(simple.Empty):
                simple.get(block=False)
        finally:
            simple.queue.delete()
            simple.close()
