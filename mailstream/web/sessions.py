"""Logged-out dashboard sessions, shared by every worker through one topic.

Logging out writes the session's id and expiry to the sessions topic
(``topics.sessions``, keyed by session id). Every worker reads that topic whole, from
the start, with no consumer group, into its ``Revocations``, and keeps following it: a
cookie logged out on one worker is refused by every worker within a poll (about a
second), and by a restarted worker as soon as it has read the topic again (until then it
accepts no session cookie at all; the bearer token still works). A revocation matters
only until the session would have expired (12 hours), so the topic stays small.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.clients import start_client
from mailstream.kafka.topics import topic_partitions
from mailstream.web.admin_auth import Revocations, Session

logger = logging.getLogger(__name__)

POLL_MS = 200
RETRY_SECONDS = 2.0

# key, value -> once the broker has the record
Publish = Callable[[bytes, bytes], Awaitable[Any]]


def encode_revocation(session: Session) -> tuple[bytes, bytes]:
    return session.id.encode(), orjson.dumps({"until": session.expires_ms})


def decode_revocation(key: bytes | None, value: bytes | None) -> tuple[str, int] | None:
    """A record's (session id, until epoch ms); None for a record that is not one."""
    if not key or not value:
        return None
    try:
        doc = orjson.loads(value)
        until = doc["until"]
        session_id = key.decode()
    except (orjson.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(until, int) or isinstance(until, bool):
        return None
    return session_id, until


class SessionFeed:
    """Keeps ``revocations`` current from the sessions topic, and publishes logouts."""

    def __init__(
        self,
        bootstrap_servers: KafkaAccess | str,
        topic: str,
        revocations: Revocations,
        publish: Publish,
    ) -> None:
        self.access = KafkaAccess.plain(bootstrap_servers)
        self.topic = topic
        self.revocations = revocations
        self._publish = publish
        self._failures = 0  # in a row, since the topic could last be read
        revocations.complete = False  # until the topic has been read to its end

    async def revoke(self, session: Session) -> None:
        """Log ``session`` out everywhere: here at once, elsewhere once they read it.
        Raises if the broker does not take the record (the caller must say so)."""
        key, value = encode_revocation(session)
        await self._publish(key, value)
        self.revocations.add(session.id, session.expires_ms)

    def apply(self, records: list[Any], now_ms: int) -> None:
        for record in records:
            found = decode_revocation(record.key, record.value)
            if found is None:
                logger.warning(
                    "sessions: record %s[%d]@%d is not a revocation; skipped",
                    record.topic,
                    record.partition,
                    record.offset,
                )
                continue
            if found[1] > now_ms:
                self.revocations.add(*found)
        self.revocations.forget_expired(now_ms)

    async def run(self) -> None:
        """Read the topic to its end, then follow it; after a broker error, read it all
        again. What was read stays in force meanwhile (no logout can be written while
        the broker is unreachable either)."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # once per outage, not every retry
                level = logging.WARNING if self._failures == 0 else logging.DEBUG
                logger.log(level, "sessions: cannot read %s (%s); trying again", self.topic, exc)
                self._failures += 1
                await asyncio.sleep(RETRY_SECONDS)

    async def _follow(self) -> None:
        partitions = await topic_partitions(self.access, self.topic)
        if not partitions:
            raise LookupError(f"topic {self.topic} does not exist yet")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer = AIOKafkaConsumer(
            **self.access.client_kwargs(), group_id=None, enable_auto_commit=False
        )
        await start_client(consumer)
        self._failures = 0
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=POLL_MS)
                now_ms = int(time.time() * 1000)
                for records in batch.values():
                    self.apply(records, now_ms)
                if not self.revocations.complete and not batch:
                    # tansu can report a short end for a multi-record batch: an empty
                    # poll at or past the end is what says everything has been read
                    ends = await consumer.end_offsets(tps)
                    if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                        self.revocations.complete = True
                        logger.info("sessions: %d revoked session(s) read", len(self.revocations))
        finally:
            await consumer.stop()
