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

from mailstream.app import app, close_when_stopping, config, settled
from mailstream.core.ingest_batch import RawMessage
from mailstream.delivery.dispatch_shell import QueueTables, flush_with
from mailstream.delivery.send_dispatcher import SendDispatcher
from mailstream.delivery.send_intake import SendIntake
from mailstream.kafka.backfill import PAUSED_WITHIN, Intake
from mailstream.kafka.direct_reader import DirectReader
from mailstream.kafka.embedded_quirks import fetch_max_wait
from mailstream.runtime.components import (
    automation_for,
    cluster,
    delivery_runtime,
    suppression_list,
    tenancy,
)
from mailstream.state.staged_flush import HANDOFF
from tables.deliveries import deliveries, delivery_queue
from tables.users import users

SEND_TOPICS = (config.topics.sends_transactional, config.topics.sends_marketing)
# How long the direct reader waits for a fetch before it looks at its partitions again.
READ_WITHIN = 0.2


flush_outbox = flush_with(lambda: app.producer)
tables = QueueTables(deliveries, delivery_queue, config.topics.dlq, "delivery")
# The reader accepts commands, one batch at a time, under the intake's lock.
intake = Intake(deliveries, SEND_TOPICS, config.bootstrap_servers)
send_intake = SendIntake(
    intake=intake,
    topics=SEND_TOPICS,
    tables=tables,
    cluster=cluster,
    tenancy=tenancy,
    producer=lambda: app.producer,
    flush=flush_outbox,
)
# The commands this worker writes are handed over (HANDOFF below) and wake the reader at
# once; its fetch brings only the others, so it need not poll often.
reader = DirectReader(
    config.bootstrap_servers,
    SEND_TOPICS,
    500,
    READ_WITHIN,
    fetch_max_wait(config, send_path=False),
)


def build_dispatcher() -> SendDispatcher:
    return SendDispatcher(
        tables=tables,
        users=users,
        runtime=delivery_runtime(),
        tenancy=tenancy,
        suppression_list=suppression_list,
        workflows=lambda tenant: automation_for(tenant).engine.workflows,
        partitions=config.topics.partitions,
        flush=flush_outbox,
        ready=settled,
        progress_keys=intake.keys.values(),
    )


def pause_faust_fetching(partitions: list[int]) -> None:
    """Faust keeps the send topics' partitions assigned; the direct reader reads them."""
    app.consumer.pause_partitions({TP(topic, p) for topic in SEND_TOPICS for p in partitions})


def take_written(written: list[tuple[str, int, int, bytes | None, bytes]]) -> None:
    """The commands this worker writes, straight to the reader."""
    reader.offer(RawMessage(*w) for w in written)


# The Faust wiring. Faust only keeps the send partitions assigned (the reader reads
# them): without acks, its monitor does not take the paused stream for a stuck one.
sends_topic = app.topic(*SEND_TOPICS, key_serializer="raw", value_serializer="raw", acks=False)


@app.agent(sends_topic, name="mailstream.delivery")
async def accept_sends(stream: Any) -> None:
    await intake.consume(stream, send_intake.accept, within=PAUSED_WITHIN)


@app.task
async def read_sends() -> None:
    await reader.run(
        deliveries.active_partitions,
        lambda topic, partition: intake.progress(topic)(partition),
        settled,
        send_intake.accept,
        intake.lock,
        pause_faust_fetching,
    )


@app.on_partitions_revoked.connect
async def _stop_reading(*_: Any, **__: Any) -> None:
    # Under the lock: a batch being accepted finishes before the partitions move.
    async with intake.lock:
        reader.invalidate()


@app.on_partitions_assigned.connect
async def _read_again(*_: Any, **__: Any) -> None:
    reader.invalidate()


@app.task
async def run_dispatcher() -> None:
    dispatcher = build_dispatcher()
    send_intake.submit, send_intake.wake = dispatcher.submit, dispatcher.wake
    try:
        await dispatcher.run()
    finally:
        send_intake.submit = send_intake.wake = None
        await intake.close()


close_when_stopping(reader)
for _topic in SEND_TOPICS:
    HANDOFF[_topic] = take_written
