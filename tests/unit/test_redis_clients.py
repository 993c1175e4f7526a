"""REDIS_URL as a Sentinel URL: how it is read, and what Celery and redis-py are given."""

import pytest
import redis
import redis.sentinel

from project.env import SettingError
from project.redis_clients import celery_broker, redis_client, sentinel_target


def test_a_sentinel_url_names_every_sentinel_and_one_database_and_password():
    target = sentinel_target("sentinel://:s%40cret@10.0.0.1;sentinel://10.0.0.2:26380/3", "cache")

    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (target.master, target.db, target.username, target.password) == ("cache", 3, None, "s@cret")


def test_celery_gets_the_database_and_password_on_every_sentinel_and_the_master_name():
    # kombu reads both from the first part only: a /3 left on the last one would be database 0.
    url, options = celery_broker("sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380/3", "cache")

    assert url == "sentinel://:pw@10.0.0.1:26379/3;sentinel://:pw@10.0.0.2:26380/3"
    assert options == {"master_name": "cache"}


def test_a_plain_redis_url_is_left_as_it_is():
    assert celery_broker("redis://:pw@127.0.0.1:6379/2", "cache") == ("redis://:pw@127.0.0.1:6379/2", {})
    client = redis_client("redis://127.0.0.1:6379/2", master="cache", socket_timeout=1)
    assert type(client.connection_pool) is redis.ConnectionPool
    assert client.connection_pool.connection_kwargs["db"] == 2


def test_a_sentinel_client_asks_the_sentinels_for_the_named_master():
    client = redis_client("sentinel://10.0.0.1:26379;sentinel://10.0.0.2/4", master="cache", socket_timeout=1)

    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "cache"
    assert pool.connection_kwargs["db"] == 4
    sentinels = [sentinel.connection_pool.connection_kwargs for sentinel in pool.sentinel_manager.sentinels]
    assert [(kwargs["host"], kwargs["port"], kwargs["socket_timeout"]) for kwargs in sentinels] == [
        ("10.0.0.1", 26379, 1),
        ("10.0.0.2", 26379, 1),
    ]


@pytest.mark.parametrize(
    ("url", "master", "named"),
    [
        ("sentinel://10.0.0.1:26379;redis://10.0.0.2:6379/0", "cache", "REDIS_URL"),
        ("sentinel://10.0.0.1/1;sentinel://10.0.0.2/2", "cache", "REDIS_URL"),
        ("sentinel://:a@10.0.0.1;sentinel://:b@10.0.0.2", "cache", "REDIS_URL"),
        ("sentinel://10.0.0.1:port", "cache", "REDIS_URL"),
        ("sentinel://10.0.0.1/db", "cache", "REDIS_URL"),
        ("sentinel://10.0.0.1?ssl=true", "cache", "REDIS_URL"),
        ("sentinel://10.0.0.1", " ", "REDIS_SENTINEL_MASTER"),
    ],
)
def test_a_bad_sentinel_setting_is_named(url, master, named):
    with pytest.raises(SettingError) as raised:
        sentinel_target(url, master)

    assert str(raised.value.code).startswith(f"configuration error: {named} ")
