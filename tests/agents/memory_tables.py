"""The in-memory stand-ins the dispatchers need to run without a broker: tables (the
memory store), a flush that writes them (stage by stage, like
mailstream.state.staged_flush) and keeps the messages it was given, a clock the test
moves, and providers and webhook clients that answer what the test scripted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailstream.config.webhooks_out_settings import Endpoint
from mailstream.delivery.compose import Sender
from mailstream.delivery.fair_share import FairPacer
from mailstream.delivery.pacing import Pacer
from mailstream.delivery.state_machine import RetryPolicy
from mailstream.delivery.unsubscribe_links import UnsubscribeTokens
from mailstream.providers.base import Accepted, Message, SendFailure
from mailstream.state.memory_store import MemoryStore
from mailstream.state.staged_flush import STAGES, Outbox
from mailstream.suppression.entries import Suppression
from mailstream.webhooks_out.poster import CallResult


class MemoryTable(MemoryStore):
    """A table in memory (mailstream.state.memory_store), with the two shortcuts the tests
    take: putting one record, and listing every key."""

    def __init__(self, name: str, partitions: tuple[int, ...] = (0, 1)) -> None:
        super().__init__(name, partitions)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.write(partition, {key: value}, 0)

    def keys(self) -> list[tuple[int, bytes]]:
        return [(p, k) for p in self.active_partitions() for k, _ in self.items(p)]


@dataclass
class MemoryFlush:
    """Writes an outbox to the memory tables once every stage is "acknowledged", keeps
    the messages; ``fail`` makes the next flushes raise, as a broker that does not
    acknowledge."""

    messages: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)
    fail: int = 0

    async def __call__(self, outbox: Outbox, staged: Callable[[int], None] | None = None) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the broker did not acknowledge")
        for stage in STAGES:
            if staged is not None:
                staged(stage)
        for stage in STAGES:
            for (store, partition), items in outbox.writes[stage].items():
                store.write(partition, items, 0)
        for topic, key, value, headers, _ in outbox.messages:
            self.messages.append((topic, key, value, dict(headers or [])))

    def on(self, topic: str) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
        return [(k, v, h) for t, k, v, h in self.messages if t == topic]


@dataclass
class FakeClock:
    """Wall time (epoch seconds) and a monotonic clock, moved only by the test."""

    wall: float = 1_772_366_400.0  # 2026-03-01T12:00:00Z
    mono: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    @property
    def ms(self) -> int:
        return int(self.wall * 1000)


Outcome = Accepted | SendFailure


class ScriptedProvider:
    """A provider that answers each address with the outcomes scripted for it, in turn
    (then Accepted), and keeps every message it was given."""

    name = "scripted"

    def __init__(self) -> None:
        self.script: dict[str, list[Outcome]] = {}
        self.sent: list[Message] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, message: Message) -> Accepted:
        self.sent.append(message)
        answers = self.script.get(message.to) or [Accepted(f"id-{len(self.sent)}")]
        outcome = answers.pop(0)
        if isinstance(outcome, SendFailure):
            raise outcome
        return outcome


SENDER = Sender("Shop <shop@example.com>", None, "example.com", "http://127.0.0.1:1", None)


@dataclass
class Runtime:
    """What the send dispatcher needs of the delivery runtime."""

    provider: ScriptedProvider
    fair: FairPacer
    tokens: UnsubscribeTokens = field(default_factory=lambda: UnsubscribeTokens("s" * 32))
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(3, 2.0, 600.0))
    concurrency: int = 8

    def provider_for(self, tenant: str) -> ScriptedProvider:
        return self.provider

    def sender_for(self, tenant: str) -> Sender:
        return SENDER

    def all_providers(self) -> list[ScriptedProvider]:
        return [self.provider]


def runtime(rate: float = 100.0, burst: float = 100.0, **more: Any) -> Runtime:
    pacer = Pacer(rate, burst)
    return Runtime(ScriptedProvider(), FairPacer(pacer, {}), **more)


@dataclass
class AddressList:
    """The global suppression list."""

    entries: dict[str, Suppression] = field(default_factory=dict)

    def get(self, address: str) -> Suppression | None:
        return self.entries.get(address)


class ScriptedEndpoints:
    """A webhook client whose endpoints answer what the test scripted, in turn (then
    200 with an empty JSON object); keeps each (endpoint, command, attempt) called."""

    def __init__(self) -> None:
        self.script: dict[str, list[CallResult]] = {}
        self.calls: list[tuple[Endpoint, dict[str, Any], int]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, endpoint: Endpoint, command: dict[str, Any], attempt: int) -> CallResult:
        self.calls.append((endpoint, command, attempt))
        answers = self.script.get(endpoint.name) or [CallResult(None, {}, 200)]
        return answers.pop(0)
