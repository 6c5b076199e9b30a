"""The one Faust app: ``build_app(config)`` makes it, with its runtime, and registers
every table, agent and view on it. Nothing here runs at import."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import faust

from mailstream.config.schema import Config
from mailstream.config.webhooks_out_settings import build_endpoints
from mailstream.kafka import embedded_quirks
from mailstream.kafka.access import kafka_access
from mailstream.kafka.broker_watch import watch_broker
from mailstream.kafka.clients import PRODUCER_BATCH_BYTES
from mailstream.kafka.membership import keep_ticking
from mailstream.observability import faust_metrics
from mailstream.runtime.components import Runtime, delivery_runtime


def create_app(config: Config) -> faust.App:
    options: dict[str, Any] = {}
    # What the broker needs of Faust's consumer (the embedded one's quirks).
    embedded_quirks.install(config)
    # aiohttp closes a connection still waiting for a whole request when its keep-alive
    # timer fires, and starts that timer on connect: this bounds how long a client may
    # take to send a request's headers (3630 s by default, room for slowloris).
    handler_args = {"keepalive_timeout": config.web.header_timeout}
    options["web_application_options"] = {"handler_args": handler_args}
    # TLS and SASL for Faust's consumer, producer and topic creation (broker.security)
    credentials = kafka_access(config).faust_credentials()
    if credentials is not None:
        options["broker_credentials"] = credentials
    app = faust.App(
        config.app_id,
        broker=config.broker.url,
        store="rocksdb://",
        datadir=str(config.data_dir),
        topic_partitions=config.topics.partitions,
        # the changelogs' replication: the broker's default unless the config says, as
        # mailstream.kafka.topics.create_topics resolved it before the app is built
        topic_replication_factor=config.topics.replication or 1,
        broker_rebalance_timeout=config.broker.rebalance_timeout,
        broker_max_poll_interval=config.broker.max_poll_interval,
        broker_session_timeout=config.broker.session_timeout,
        broker_heartbeat_interval=config.broker.heartbeat_interval,
        consumer_auto_offset_reset="earliest",
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


def watch_the_broker(rt: Runtime) -> None:
    """Have the worker ask the broker for its metadata every second: ``/health`` reports
    it not ready within seconds of losing the broker, and it stops after
    ``broker.lost_after``, or when the broker came back without its data
    (mailstream.kafka.broker_watch)."""
    from mailstream.runtime.preflight import broker_data_problem, persisted_offsets

    config = rt.config

    async def check_data() -> str | None:
        persisted = await asyncio.to_thread(persisted_offsets, config.data_dir, config.app_id)
        return await broker_data_problem(
            kafka_access(config), config.data_dir, persisted, config.broker.embedded
        )

    async def watch() -> None:
        await watch_broker(
            kafka_access(config), rt.broker_contact, check_data, config.topics.all_names()
        )

    rt.app.task(watch)


def follow_membership(rt: Runtime) -> None:
    """A worker paused past its group session exits as soon as it wakes
    (mailstream.kafka.membership)."""

    async def start_ticking() -> None:
        keep_ticking(rt.membership)

    rt.app.task(start_ticking)


def build_app(config: Config, env: Mapping[str, str]) -> tuple[faust.App, Runtime]:
    """The worker's app, with every table, agent, timer and view ``config`` asks for
    registered on it, and the runtime they share. A missing secret or API key fails
    here, naming its key, before anything starts."""
    import agents.apply_feedback
    import agents.follow_suppressions
    import agents.guard_replays
    import agents.ingest
    import agents.run_timers
    import agents.sweep_retention
    from mailstream.web import (
        dashboard,
        feedback_views,
        login,
        routes,
        suppression_views,
        track_api,
    )
    from mailstream.workflows import health_snapshots

    app = create_app(config)
    rt = Runtime(app, config, env)
    agents.follow_suppressions.register(rt)
    agents.ingest.register(rt)
    agents.run_timers.register(rt)
    if config.delivery.enabled:
        import agents.deliver

        agents.deliver.register(rt, delivery_runtime(config, env))
    agents.apply_feedback.register(rt)
    agents.guard_replays.register(rt)
    if config.webhooks_out:
        import agents.call_webhooks

        agents.call_webhooks.register(rt, build_endpoints(config.webhooks_out, env))
    agents.sweep_retention.register(rt)
    views = routes.register(rt)
    sessions = login.register(views)
    health = health_snapshots.register(app, rt.workflow_names)
    dashboard.register(views, sessions, health)
    feedback_views.register(rt)
    suppression_views.register(rt, views)
    track_api.register(rt)
    watch_the_broker(rt)
    follow_membership(rt)
    return app, rt
