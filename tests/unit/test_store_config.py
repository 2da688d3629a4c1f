"""The store keys: TinyDB by default, Redis by URL; a Redis password never shows in an error."""

from __future__ import annotations

import pytest

from lb_core import config
from lb_core.config_types import redacted_url
from lb_core.store import make_store
from lb_core.store_tinydb import TinyDbStore

BASE = {"secret": "s"}


def problems(data: dict) -> str:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(data, "my.yaml")
    return str(caught.value)


def test_tinydb_stays_the_default():
    c = config.parse(BASE)
    assert c.store.backend == "tinydb" and isinstance(make_store(c), TinyDbStore)


def test_redis_store_keys():
    c = config.parse({**BASE, "store": {"backend": "redis", "url": "rediss://:pw@redis.example:6380/2",
                                        "prefix": "lb-a", "timeout_s": 0.5, "max_connections": 8}})
    assert (c.store.url, c.store.prefix, c.store_timeout_s, c.store.max_connections) == (
        "rediss://:pw@redis.example:6380/2", "lb-a", 0.5, 8)
    store = make_store(c)
    assert type(store).__name__ == "RedisStore" and store.key("t", "meetings") == "lb-a:t:meetings"


def test_store_timeout_defaults_within_the_backend_timeout():
    redis = {"backend": "redis", "url": "redis://localhost"}
    assert config.parse({**BASE, "store": redis}).store_timeout_s == 2.0
    assert config.parse({**BASE, "store": redis, "backend": {"timeout_s": 0.5}}).store_timeout_s == 0.5


def test_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:from-env@127.0.0.1:6379/0")
    c = config.parse({**BASE, "store": {"backend": "redis", "url": "${REDIS_URL}"}})
    assert c.store.url == "redis://:from-env@127.0.0.1:6379/0"
    assert "from-env" not in repr(c)


@pytest.mark.parametrize(("store", "message"), [
    ({"backend": "redis"}, "my.yaml: store.url: is required when store.backend is redis"),
    ({"backend": "postgres"}, "my.yaml: store.backend: must be tinydb or redis"),
    ({"backend": "redis", "url": "http://:hunter2@host/0"}, "must be a redis://, rediss:// or unix:// URL"),
    ({"backend": "redis", "url": "redis://:hunter2@host:99999"}, "store.url: is not a valid URL"),
    ({"backend": "redis", "url": "redis://:hunter2@host/zero"}, "the database after the host must be a number"),
    ({"backend": "redis", "url": "redis://host", "prefix": "has space"}, "store.prefix: must be 1-64"),
    ({"backend": "redis", "url": "redis://host", "timeout_s": 0}, "store.timeout_s: must be at least 0.05"),
])
def test_bad_store_keys_are_named_and_hide_the_password(store, message):
    text = problems({**BASE, "store": store})
    assert message in text
    assert "hunter2" not in text


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:pw@host/0", "redis://user:***@host/0"),
    ("redis://pw@host", "redis://***@host"),
    ("rediss://host:6380?password=pw&ssl_cert_reqs=none", "rediss://host:6380?password=***&ssl_cert_reqs=none"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
])
def test_redacted_url(url, shown):
    assert redacted_url(url) == shown
