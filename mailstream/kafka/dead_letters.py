"""Read the dead-letter topic back: each message with its reason and where it came from."""

from __future__ import annotations

import base64
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError
from mailstream.kafka.access import kafka_access
from mailstream.kafka.clients import start_client
from mailstream.producer import unreachable


def describe(message: Any) -> dict[str, Any]:
    """A dead letter as JSON: reason, source topic/partition/offset and the original bytes."""
    headers = {k: v.decode(errors="replace") for k, v in (message.headers or ())}
    value: bytes | None = message.value
    doc: dict[str, Any] = {
        "reason_code": headers.get("mailstream.reason_code"),
        "reason": headers.get("mailstream.reason"),
        "source": {
            "topic": headers.get("mailstream.source.topic"),
            "partition": int(headers.get("mailstream.source.partition", "-1")),
            "offset": int(headers.get("mailstream.source.offset", "-1")),
        },
        "key": message.key.decode(errors="replace") if message.key is not None else None,
        "dlq_offset": f"{message.partition}:{message.offset}",
    }
    try:
        doc["value"] = value.decode() if value is not None else None
    except UnicodeDecodeError:
        doc["value_base64"] = base64.b64encode(value or b"").decode()
    return doc


async def read_dead_letters(config: Config, *, limit: int, idle: float) -> list[dict[str, Any]]:
    """Up to ``limit`` dead letters from the start; stops after ``idle`` seconds of quiet."""
    consumer = AIOKafkaConsumer(
        config.topics.dlq,
        **kafka_access(config).client_kwargs(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        # exactly_once workers write dead letters in transactions: an aborted one's are
        # written again by the retry, and would show twice
        isolation_level="read_committed",
    )
    try:
        await start_client(consumer)
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerError(unreachable(config.bootstrap_servers, exc)) from None
    letters: list[dict[str, Any]] = []
    try:
        while len(letters) < limit:
            batch = await consumer.getmany(timeout_ms=int(idle * 1000), max_records=limit)
            if not batch:
                break
            for messages in batch.values():
                letters.extend(describe(m) for m in messages)
    finally:
        await consumer.stop()
    return letters[:limit]
