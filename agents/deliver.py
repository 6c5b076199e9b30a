"""The delivery agent: send commands in, paced and retried provider calls out, each send
id delivered once.

Two actors share the deliveries table: the direct reader hands batches of send commands
to the intake (mailstream.delivery.send_intake), which records each new one as queued;
the dispatcher (mailstream.delivery.send_dispatcher) takes queued sends in order
(transactional first) as the pacer allows, records ``attempting``, calls the provider
without blocking anything else, and records the outcome. What the intake accepts is made
durable by the dispatcher's next round, in that round's one flush.
"""

from __future__ import annotations

from typing import Any

from faust.types import TP

from mailstream.delivery.dispatch_shell import QueueTables, flush_with
from mailstream.delivery.send_dispatcher import SendDispatcher
from mailstream.delivery.send_intake import SendIntake
from mailstream.kafka.access import kafka_access
from mailstream.kafka.direct_reader import DirectReader
from mailstream.kafka.embedded_quirks import fetch_max_wait
from mailstream.kafka.intake import Intake
from mailstream.kafka.records import RawMessage
from mailstream.runtime.components import DeliveryRuntime, Runtime
from mailstream.state.staged_flush import HANDOFF, Written

# How long the direct reader waits for a fetch before it looks at its partitions again.
READ_WITHIN = 0.2


class DeliveryAgent:
    """The intake, the reader and the dispatcher of the send topics' partitions this
    worker owns."""

    def __init__(self, rt: Runtime, delivery: DeliveryRuntime) -> None:
        config, app = rt.config, rt.app
        self.rt = rt
        self.delivery = delivery
        self.topics = (config.topics.sends_transactional, config.topics.sends_marketing)
        self.flush = flush_with(lambda: rt.writer)
        deliveries, queue = rt.tables.deliveries, rt.tables.delivery_queue
        self.tables = QueueTables(deliveries, queue, config.topics.dlq, "delivery")
        # The reader accepts commands, one batch at a time, under the intake's lock.
        self.intake = Intake(deliveries, self.topics)
        self.send_intake = SendIntake(
            intake=self.intake,
            topics=self.topics,
            tables=self.tables,
            cluster=rt.cluster,
            tenancy=rt.tenancy,
            producer=lambda: app.producer,
            flush=self.flush,
        )
        # The commands this worker writes are handed over (``take_written``) and wake the
        # reader at once; its fetch brings only the others, so it need not poll often.
        self.reader = DirectReader(
            kafka_access(config),
            self.topics,
            500,
            READ_WITHIN,
            fetch_max_wait(config, send_path=False),
        )

    def build_dispatcher(self) -> SendDispatcher:
        rt = self.rt
        return SendDispatcher(
            tables=self.tables,
            users=rt.tables.users,
            runtime=self.delivery,
            tenancy=rt.tenancy,
            suppression_list=rt.suppression_list,
            workflows=lambda tenant: rt.automation_for(tenant).engine.workflows,
            partitions=rt.config.topics.partitions,
            flush=self.flush,
            ready=rt.settled,
            progress_keys=self.intake.keys.values(),
        )

    def pause_faust_fetching(self, partitions: list[int]) -> None:
        """Faust keeps the send topics' partitions assigned; the direct reader reads them."""
        tps = {TP(topic, p) for topic in self.topics for p in partitions}
        self.rt.app.consumer.pause_partitions(tps)

    def take_written(self, written: list[Written]) -> None:
        """The commands this worker writes, straight to the reader."""
        since = {(t, p, offset): start for t, p, offset, _, _, start in written}
        self.reader.offer((RawMessage(*w[:5]) for w in written), since)

    async def accept_sends(self, stream: Any) -> None:
        await self.intake.drain(stream)

    async def read_sends(self) -> None:
        intake = self.intake
        await self.reader.run(
            self.rt.tables.deliveries.active_partitions,
            lambda topic, partition: intake.progress(topic)(partition),
            self.rt.settled,
            self.send_intake.accept,
            intake.lock,
            self.pause_faust_fetching,
        )

    async def stop_reading(self, *_: Any, **__: Any) -> None:
        # Under the lock: a batch being accepted finishes before the partitions move.
        async with self.intake.lock:
            self.reader.invalidate()

    async def read_again(self, *_: Any, **__: Any) -> None:
        self.reader.invalidate()

    async def run_dispatcher(self) -> None:
        dispatcher = self.build_dispatcher()
        send_intake = self.send_intake
        send_intake.submit, send_intake.wake = dispatcher.submit, dispatcher.wake
        try:
            await dispatcher.run()
        finally:
            send_intake.submit = send_intake.wake = None


def register(rt: Runtime, delivery: DeliveryRuntime) -> None:
    """The Faust wiring. Faust only keeps the send partitions assigned (the reader reads
    them): without acks, its monitor does not take the paused stream for a stuck one."""
    app, agent = rt.app, DeliveryAgent(rt, delivery)
    topic = app.topic(*agent.topics, key_serializer="raw", value_serializer="raw", acks=False)
    app.agent(topic, name="mailstream.delivery")(agent.accept_sends)
    app.task(agent.read_sends)
    app.on_partitions_revoked.connect(agent.stop_reading)
    app.on_partitions_assigned.connect(agent.read_again)
    app.task(agent.run_dispatcher)
    rt.close_when_stopping(agent.reader)
    for name in agent.topics:
        HANDOFF[name] = agent.take_written
