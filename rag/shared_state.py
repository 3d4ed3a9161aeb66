"""State that several guardrag processes share when the settings name a shared store: the
API's rate-limit counts (a `limits` storage, `memory://` or `redis://`) and the Redis
connection the answer cache keeps its entries in. Built here from settings, handed to users.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string

from rag.settings import Settings

# A shared store that does not answer within this is down for the request that asked: the
# answer cache then misses, the API answers 503, rather than holding the request. Redis on
# loopback answered a rate-limit check in 0.05 ms p50 (evals/bench_state.py).
REDIS_TIMEOUT_S = 2.0


class SharedStateError(RuntimeError):
    """A configured shared store that cannot be used; the message names it, never its
    password, and says what to check."""


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def rate_limit_storage(settings: Settings) -> Storage:
    """Where the API counts each key's requests: this process (`memory://`, the default)
    or a Redis every pod shares, so a key gets its rate once, not once per pod."""
    uri = settings.api.rate_limit_storage
    # Redis's own default is to wait for ever; limits passes these to redis-py.
    timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    try:
        storage = storage_from_string(uri, **(timeouts if uri.startswith("redis") else {}))
    except ConfigurationError as exc:
        raise SharedStateError(
            f"api.rate_limit_storage {without_password(uri)} is not usable: {exc}"
        ) from None
    # storage_from_string also builds asyncio storages (async+redis://); the API's limiter
    # is synchronous.
    if not isinstance(storage, Storage):
        raise SharedStateError(
            f"api.rate_limit_storage {without_password(uri)}: use a synchronous storage "
            f"(memory:// or redis://)"
        )
    if not storage.check():
        raise SharedStateError(
            f"api.rate_limit_storage {without_password(uri)} does not answer: check the URL "
            f"and that the server runs"
        )
    return storage


def redis_client(url: str, setting: str = "cache.url") -> redis.Redis:
    """A Redis connection pool, checked once: a wrong URL fails the start, naming the
    setting, instead of every request later."""
    client = redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise SharedStateError(
            f"{setting} {without_password(url)} does not answer ({exc}): check the URL and "
            f"that Redis runs"
        ) from None
    return client
