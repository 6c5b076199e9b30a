"""EventProducer: the Python SDK for sending events to mailstream."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError
from mailstream.kafka.access import KafkaAccess, kafka_access
from mailstream.kafka.clients import start_client
from mailstream.kafka.embedded_quirks import idempotence_supported
from mailstream.kafka.partitioning import keyed_partition


def unreachable(servers: str, exc: Exception) -> str:
    """One line saying the broker is not there, and where to point mailstream instead."""
    detail = "" if isinstance(exc, KafkaConnectionError) else f" ({exc})"
    return (
        f"cannot reach the broker at {servers}{detail}; is it running? (broker.url in the"
        " config, or $MAILSTREAM_BROKER_URL)"
    )


def make_event(
    event_type: str,
    user_id: str,
    payload: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    timestamp: int | None = None,
    metadata: dict[str, Any] | None = None,
    tenant_id: str | None = None,
) -> dict[str, Any]:
    """The JSON document of one event, with ``event_id`` (a UUID) and ``timestamp`` (now,
    epoch ms) filled in when absent."""
    event: dict[str, Any] = {
        "event_id": event_id or uuid.uuid4().hex,
        "event_type": event_type,
        "user_id": user_id,
        "timestamp": timestamp if timestamp is not None else int(time.time() * 1000),
        "payload": payload or {},
        "metadata": metadata or {},
    }
    if tenant_id is not None:
        event["tenant_id"] = tenant_id
    return event


class EventProducer:
    """Send events to ``mailstream.events``, keyed by user id, each to its user's
    partition as the engine reckons it (mailstream.kafka.partitioning), whatever partitioner
    ``producer_options`` name.

    Fills in ``event_id`` (a UUID) and ``timestamp`` (now, epoch ms) when absent::

        async with EventProducer("127.0.0.1:9092") as producer:
            await producer.identify("u1", {"email": "ada@example.com"})
            await producer.emit("cart_updated", "u1", {"items": [...]})

    On a secured cluster, pass a ``KafkaAccess`` (mailstream.kafka.access) instead of
    the address: it carries TLS and SASL settings, the password read from a variable::

        from mailstream.config.kafka_sections import SecurityConfig
        from mailstream.kafka.access import KafkaAccess

        security = SecurityConfig(
            protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            username="mailstream",
            password_env="KAFKA_PASSWORD",
            ca_file="ca.pem",
        )
        access = KafkaAccess.from_settings("kafka1:9093,kafka2:9093", security)
        async with EventProducer(access) as producer:
            ...

    ``EventProducer.from_config(config)`` takes them from ``broker.security``. A broker
    that refuses the connection's security (wrong password, untrusted certificate, TLS
    expected) makes ``start`` raise BrokerError with one line naming the cause.
    """

    def __init__(
        self,
        bootstrap_servers: KafkaAccess | str = "127.0.0.1:9092",
        topic: str = "mailstream.events",
        *,
        tenant_id: str | None = None,
        **producer_options: Any,
    ) -> None:
        self.topic = topic
        self.tenant_id = tenant_id
        self._access = KafkaAccess.plain(bootstrap_servers)
        self._servers = self._access.bootstrap_servers
        # Every replica in sync has an event before it counts as sent, and a retried
        # send is never written twice: no event lost to a leader change, none doubled.
        # The embedded broker lacks InitProducerId: unless told, start() asks the broker
        # and goes without idempotence there (from_config tells for broker.embedded: true).
        self._ask_idempotence = "enable_idempotence" not in producer_options
        self._options = {"acks": "all", "enable_idempotence": True} | producer_options
        self._producer = AIOKafkaProducer(**self._access.client_kwargs(), **self._options)

    @classmethod
    def from_config(cls, config: Config, **producer_options: Any) -> EventProducer:
        """A producer for the config's broker and events topic (acks=all, idempotent
        except on the embedded broker, which cannot be: said by broker.embedded, else
        asked at start)."""
        if config.broker.embedded:
            producer_options = {"enable_idempotence": False} | producer_options
        return cls(kafka_access(config), config.topics.events, **producer_options)

    async def start(self) -> None:
        """Connect; BrokerError (one line, no traceback to print) if the broker is not there."""
        if self._access.security_protocol != "PLAINTEXT":
            # a TLS handshake with a plain-text listener would wait a minute: a bounded
            # look first, which also names a wrong password or an untrusted certificate
            try:
                await self._access.check()
            except BrokerError:
                await self._producer.stop()  # made, never started: closed all the same
                raise
        try:
            if self._ask_idempotence and not await self._idempotence_supported():
                await self._producer.stop()  # never started: nothing to flush
                options = self._options | {"enable_idempotence": False}
                self._producer = AIOKafkaProducer(**self._access.client_kwargs(), **options)
            self._ask_idempotence = False
            await start_client(self._producer)  # stopped again if that fails
        except KafkaError as exc:
            # aiokafka only says it could not bootstrap: one connection of our own says why
            why = await self._access.security_problem()
            raise BrokerError(why or unreachable(self._servers, exc)) from None

    async def _idempotence_supported(self) -> bool:
        try:
            return await idempotence_supported(self._access)
        except BaseException:
            await self._producer.stop()  # not started: closed, so it is not left unclosed
            raise

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def emit(
        self,
        event_type: str,
        user_id: str,
        payload: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
        timestamp: int | None = None,
        metadata: dict[str, Any] | None = None,
        tenant_id: str | None = None,
        wait: bool = False,
    ) -> str:
        """Queue one event and return its id; ``wait=True`` returns once the broker has it."""
        event = make_event(
            event_type,
            user_id,
            payload,
            event_id=event_id,
            timestamp=timestamp,
            metadata=metadata,
            tenant_id=tenant_id or self.tenant_id,
        )
        await self.send_raw(user_id.encode(), orjson.dumps(event), wait=wait)
        return str(event["event_id"])

    async def identify(self, user_id: str, traits: dict[str, Any], **options: Any) -> str:
        """Set traits (email, first_name, timezone, consent flags, ...) on a user."""
        return await self.emit("identify", user_id, traits, **options)

    async def send_raw(self, key: bytes | None, value: bytes, *, wait: bool = False) -> None:
        """Send bytes as they are (for tools and tests that need malformed events)."""
        partition = await keyed_partition(self._producer, self.topic, key)
        future = await self._producer.send(self.topic, value, key=key, partition=partition)
        if wait:
            await future

    async def flush(self) -> None:
        await self._producer.flush()
