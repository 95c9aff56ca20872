"""A test's own Celery queue in the tests' Redis database, for the real-worker tests."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from example_project.celery import app

from .conftest import REDIS_URL


@dataclass
class Broker:
    """This test's queue in the tests' Redis database.

    Parallel test runs (tox environments, developers) share that database, so each test
    has a queue of its own and clears only its own keys, never the whole database.
    """

    client: redis.Redis
    queue: str

    def publish(self, task_name: str, *args: int, **options: Any) -> None:
        """Send one task message to this queue, over a connection of its own.

        Not through the app's producer pool: a pooled connection remembers the queues it
        declared and would not declare them again once their keys have been deleted.
        """
        with app.connection_for_write() as connection:
            app.tasks[task_name].apply_async(
                args, connection=connection, queue=self.queue, **options
            )

    def messages(self) -> list[dict[str, Any]]:
        """The raw messages waiting in the queue, oldest first, with their decoded body."""
        found = []
        for raw in reversed(self.client.lrange(self.queue, 0, -1)):  # LPUSH in, BRPOP out
            message = json.loads(raw)
            assert message["properties"]["body_encoding"] == "base64"
            body = json.loads(base64.b64decode(message["body"]))
            found.append({"raw": raw, "message": message, "body": body})
        return found

    def queued(self) -> int:
        return int(self.client.llen(self.queue))

    def unacked(self) -> list[str]:
        """Task ids of this queue's delivered-but-unacked messages (kombu's ``unacked``)."""
        found = []
        for raw in self.client.hvals("unacked"):
            if self.queue.encode() in raw:
                message = json.loads(raw)[0]
                found.append(message["headers"]["id"])
        return found

    def clear(self) -> None:
        """Delete the queue and its exchange binding (kombu keys named after the queue)."""
        keys = list(self.client.scan_iter(match=f"*{self.queue}*"))
        if keys:
            self.client.delete(*keys)
        # A killed worker leaves its message in the unacked hash: drop ours, only ours.
        for tag, raw in self.client.hgetall("unacked").items():
            if self.queue.encode() in raw:
                self.client.hdel("unacked", tag)
                self.client.zrem("unacked_index", tag)


@contextmanager
def own_queue(prefix: str) -> Iterator[Broker]:
    """A fresh queue named after ``prefix``; emptied before and after."""
    assert app.conf.broker_url == REDIS_URL, (app.conf.broker_url, REDIS_URL)
    assert not app.conf.task_always_eager
    client = redis.Redis.from_url(REDIS_URL)
    broker = Broker(client, queue=f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}")
    broker.clear()
    try:
        yield broker
    finally:
        broker.clear()
        client.close()
