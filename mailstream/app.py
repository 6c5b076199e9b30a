"""The one Faust app; agents and tables import it from here."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from mailstream.config.load import load_config
from mailstream.config.schema import Config
from mailstream.kafka import embedded_quirks
from mailstream.kafka.broker_watch import BrokerContact, watch_broker
from mailstream.observability import faust_metrics

PRODUCER_BATCH_BYTES = 256 * 1024


def create_app(config: Config) -> faust.App:
    options: dict[str, Any] = {}
    # What the broker needs of Faust's consumer (the embedded one's quirks). With both
    # direct readers on, Faust's own consumer carries only feedback and webhook calls.
    embedded_quirks.install(
        config, send_path=not (config.ingest.direct_read and config.delivery.direct_read)
    )
    # aiohttp closes a connection still waiting for a whole request when its keep-alive
    # timer fires, and starts that timer on connect: this bounds how long a client may
    # take to send a request's headers (3630 s by default, room for slowloris).
    handler_args = {"keepalive_timeout": config.web.header_timeout}
    options["web_application_options"] = {"handler_args": handler_args}
    app = faust.App(
        config.app_id,
        broker=config.broker.url,
        store="rocksdb://",
        datadir=str(config.data_dir),
        topic_partitions=config.topics.partitions,
        topic_replication_factor=config.topics.replication,
        broker_rebalance_timeout=config.broker.rebalance_timeout,
        broker_session_timeout=config.broker.session_timeout,
        broker_heartbeat_interval=config.broker.heartbeat_interval,
        consumer_auto_offset_reset="earliest",
        # A flush fills one record batch per changelog partition (mailstream.state.staged_flush),
        # and more, one after another, when a partition's records outgrow it: this holds
        # about 350 user records of the bench's mix. Batches of 512 KB and 1 MB made no
        # difference to two workers of the bench (three rounds each).
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_compression_type=config.broker.compression_type,
        table_standby_replicas=0,
        web_enabled=True,
        web_host=config.web.host,
        # the address the web server listens on (Faust's default: every interface)
        web_bind=config.web.host,
        web_port=config.web.port,
        canonical_url=config.web_url,
        # Faust's own table browser would serve user data to anyone: only our views do.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        **options,
    )
    faust_metrics.install(app)  # served at /metrics by mailstream.web.routes, beside our own
    return app


def close_when_stopping(*resources: Any) -> None:
    """Close each of ``resources`` (its ``close()`` coroutine) when the worker stops."""

    async def close_on_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for resource in resources:
                await resource.close()

    app.task(close_on_stop)


def settled() -> bool:
    """True once this worker has joined its group and recovered its tables, and is not
    rebalancing: only then is its view of its partitions complete."""
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    return not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()


def watch_the_broker() -> None:
    """Have the worker ask the broker for its metadata every second: ``/health`` reports
    it not ready within seconds of losing the broker, and it stops after
    ``broker.lost_after``, or when the broker came back without its data
    (mailstream.kafka.broker_watch)."""
    from mailstream.runtime.preflight import broker_data_problem, persisted_offsets

    async def check_data() -> str | None:
        persisted = await asyncio.to_thread(persisted_offsets, config.data_dir, config.app_id)
        return await broker_data_problem(
            config.bootstrap_servers, config.data_dir, persisted, config.broker.embedded
        )

    async def watch() -> None:
        await watch_broker(
            config.bootstrap_servers, broker_contact, check_data, config.topics.all_names()
        )

    app.task(watch)


config = load_config()
app = create_app(config)
broker_contact = BrokerContact(lost_after=config.broker.lost_after)

# Read directly (mailstream.kafka.direct_reader), Faust only keeps the events partitions assigned:
# without acks, its monitor does not take the paused stream for a stuck one.
events_topic = app.topic(
    config.topics.events,
    key_serializer="raw",
    value_serializer="raw",
    acks=not config.ingest.direct_read,
)
dlq_topic = app.topic(config.topics.dlq, key_serializer="raw", value_serializer="raw")
