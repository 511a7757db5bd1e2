"""The stock filter's Lua scripts, read from this package and registered one way."""

from __future__ import annotations

from importlib import resources

from redis.commands.core import AsyncScript

from services.stockfilter.client import RedisClient


def register(redis: RedisClient, name: str) -> AsyncScript:
    """The script `name` (e.g. "reserve.lua"), registered on `redis` (sent by
    EVALSHA, loaded again when Redis forgot it)."""
    text = (resources.files("services.stockfilter") / name).read_text()
    return redis.register_script(text)
