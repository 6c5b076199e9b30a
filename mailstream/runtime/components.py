"""What a worker's agents and views share, built once from its config: tables, topics,
the suppression list, workflows, policy, effects, and the delivery pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from mailstream.config.schema import Config
from mailstream.core.cluster_trust import cluster_key
from mailstream.core.tenants import OTHER_LABEL
from mailstream.delivery.compose import Sender
from mailstream.delivery.fair_share import FairPacer
from mailstream.delivery.pacing import Pacer
from mailstream.delivery.state_machine import RetryPolicy
from mailstream.delivery.unsubscribe_links import UnsubscribeTokens
from mailstream.exceptions import ConfigError
from mailstream.kafka.access import kafka_access
from mailstream.kafka.broker_watch import BrokerContact
from mailstream.kafka.clients import PRODUCER_BATCH_BYTES
from mailstream.kafka.direct_reader import DirectReader, Positions
from mailstream.kafka.embedded_quirks import fetch_max_wait
from mailstream.kafka.intake import Intake
from mailstream.kafka.membership import Membership, exit_paused
from mailstream.kafka.records import RawMessage
from mailstream.kafka.topics import changelog_configs
from mailstream.kafka.transactions import Transactions
from mailstream.kafka.transactions import install as install_transactions
from mailstream.providers import build_provider
from mailstream.providers.base import Provider
from mailstream.state.rocksdb_store import PartitionStore, TableSpec, raw_table
from mailstream.suppression.global_list import GlobalSuppressionList
from mailstream.workflows.apply_effects import EffectsApplier
from mailstream.workflows.automation import Automation
from mailstream.workflows.engine import Engine
from mailstream.workflows.send_policy import Policy
from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates
from tables.deliveries import DELIVERIES, DELIVERY_QUEUE
from tables.replay_claims import REPLAY_GUARD
from tables.timers import TIMERS
from tables.users import USERS
from tables.webhook_calls import WEBHOOK_CALLS, WEBHOOK_QUEUE

# The batches of the topics read through ``Runtime.read_through`` (feedback, webhook
# commands, replay claims): a fetch returns as soon as records arrive, so the wait only
# says how often an idle reader looks again (a rebalance wakes it at once).
READ_BATCH = 500
READ_WITHIN = 0.2

# Under exactly_once, the role of a flush that writes a table: flushes of one role share
# their transactional producers (mailstream.kafka.transactions), those of two roles run
# side by side.
ROLES = {
    "users": "state",
    "timers": "state",
    "deliveries": "delivery",
    "delivery_queue": "delivery",
    "webhook_calls": "webhooks",
    "webhook_queue": "webhooks",
    "replay_guard": "replay",
}

# what an agent does with a batch of messages
ApplyBatch = Callable[[list[RawMessage]], Awaitable[None]]


@dataclass
class Tables:
    """The worker's tables; the webhook tables exist only where webhook steps are configured."""

    users: PartitionStore
    timers: PartitionStore
    deliveries: PartitionStore
    delivery_queue: PartitionStore
    replay_guard: PartitionStore
    webhook_calls: PartitionStore | None = None
    webhook_queue: PartitionStore | None = None

    @classmethod
    def declare(cls, app: faust.App, config: Config) -> Tables:
        partitions = config.topics.partitions

        def table(spec: TableSpec) -> PartitionStore:
            return raw_table(app, spec, partitions, changelog_configs(config))

        tables = cls(
            table(USERS),
            table(TIMERS),
            table(DELIVERIES),
            table(DELIVERY_QUEUE),
            table(REPLAY_GUARD),
        )
        if config.webhooks_out:
            tables.webhook_calls, tables.webhook_queue = table(WEBHOOK_CALLS), table(WEBHOOK_QUEUE)
        return tables

    def stores(self) -> list[PartitionStore]:
        return [s for s in vars(self).values() if isinstance(s, PartitionStore)]


class Runtime:
    """What one worker's agents and views share, built from its config and environment:
    the app, its tables and topics, the suppression list, and per tenant the workflows,
    the send policy and what turns their effects into messages."""

    def __init__(self, app: faust.App, config: Config, env: Mapping[str, str]) -> None:
        self.app = app
        self.config = config
        self.env = env
        self.tables = Tables.declare(app, config)
        broker = config.broker
        self.membership = Membership.for_session(
            broker.session_timeout, broker.heartbeat_interval, exit_paused
        )
        for store in self.tables.stores():
            store.membership = self.membership
        # exactly_once: flushes commit through this (mailstream.kafka.transactions)
        self.transactions = self._transactions() if config.exactly_once else None
        self.broker_contact = BrokerContact(lost_after=config.broker.lost_after)
        # Read directly (mailstream.kafka.direct_reader), Faust only keeps the events
        # partitions assigned: without acks, its monitor does not take the paused stream
        # for a stuck one.
        self.events_topic = app.topic(
            config.topics.events,
            key_serializer="raw",
            value_serializer="raw",
            acks=False,
        )
        self.suppression_list = GlobalSuppressionList(
            kafka_access(config),
            config.topics.suppression,
            config.data_dir / "suppression-list",
        )
        self.tenancy = config.tenancy()
        # signs the commands this worker writes and the lookups it forwards
        # (mailstream.core.cluster_trust)
        self.cluster = cluster_key(config.cluster.secret_env, env)
        # The default settings, and each configured tenant's own (workflows, policy,
        # templates). Unconfigured tenants (when allowed) run with the defaults,
        # labelled (other).
        self.automation = self._automation(config)
        self.applier = self._applier(config, self.tenancy.label(config.ingest.default_tenant))
        self._automations = {name: self._automation(config.tenant(name)) for name in config.tenants}
        self._appliers = {name: self._applier(config.tenant(name), name) for name in config.tenants}
        self._other_applier = self._applier(config, OTHER_LABEL)

    def _transactions(self) -> Transactions:
        app, config, users = self.app, self.config, self.tables.users

        def owned() -> list[int]:
            actives = app.assignor.assigned_actives()
            return sorted(tp.partition for tp in actives if tp.topic == users.changelog_topic)

        transactions = Transactions(
            kafka_access(config),
            config.app_id,
            config.topics.partitions,
            {store.name: ROLES.get(store.name, store.name) for store in self.tables.stores()},
            owned,
            lambda: bool(app.rebalancing),
            exit_paused,
            {
                "compression_type": config.broker.compression_type,
                "max_batch_size": PRODUCER_BATCH_BYTES,
            },
        )
        install_transactions(app, transactions)
        self.close_when_stopping(transactions)
        return transactions

    @property
    def writer(self) -> Any:
        """What flushes go through (mailstream.state.staged_flush): the transactions
        under exactly_once, else Faust's producer."""
        return self.transactions if self.transactions is not None else self.app.producer

    def _automation(self, cfg: Config) -> Automation:
        return Automation(
            Engine(cfg.compiled_workflows()),
            Policy(cfg.policy.settings(), listed=self.suppression_list.get),
        )

    def _applier(self, cfg: Config, label: str) -> EffectsApplier:
        topics = self.config.topics
        return EffectsApplier(
            Templates(cfg.templates_dir or DEFAULT_TEMPLATE_DIR),
            self.tables.timers,
            {"transactional": topics.sends_transactional, "marketing": topics.sends_marketing},
            topics.dlq,
            topics.webhooks,
            tenant_label=label,
            cluster=self.cluster,
            max_message_bytes=cfg.delivery.max_message_bytes,
        )

    def automation_for(self, tenant: str) -> Automation:
        return self._automations.get(tenant, self.automation)

    def applier_for(self, tenant: str) -> EffectsApplier:
        found = self._appliers.get(tenant)
        if found is not None:
            return found
        if tenant == self.config.ingest.default_tenant:
            return self.applier
        return self._other_applier

    def workflow_names(self) -> set[str]:
        """Every workflow configured, by default or for any tenant (named alike, counted
        as one in workflow health)."""
        names = set(self.automation.engine.workflows)
        for tenant_automation in self._automations.values():
            names.update(tenant_automation.engine.workflows)
        return names

    def settled(self) -> bool:
        """True once this worker has joined its group and recovered its tables, and is
        not rebalancing: only then is its view of its partitions complete."""
        app: Any = self.app
        recovery = app.tables.recovery
        return not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()

    def read_through(
        self,
        topic: str,
        agent: str,
        intake: Intake,
        apply: Callable[[list[RawMessage]], Awaitable[None]],
    ) -> DirectReader:
        """Read ``topic``'s partitions that this worker owns with a direct reader
        (mailstream.kafka.direct_reader) from their progress in ``intake``, and hand each
        batch to ``apply`` under ``intake.lock``. A Faust agent named ``agent`` keeps the
        partitions assigned (so the group places them with the tables) and drains what
        its paused stream brings. Returns the reader, closed when the worker stops."""
        app, config = self.app, self.config
        # Without acks Faust's monitor does not take the paused stream for a stuck one.
        channel = app.topic(topic, key_serializer="raw", value_serializer="raw", acks=False)
        reader = DirectReader(
            kafka_access(config),
            [topic],
            READ_BATCH,
            READ_WITHIN,
            fetch_max_wait(config, send_path=False),
        )

        def pause_faust_fetching(partitions: list[int]) -> None:
            app.consumer.pause_partitions({TP(topic, p) for p in partitions})

        async def advance(positions: Positions) -> None:
            await intake.advance(positions, self.writer)

        async def read() -> None:
            await reader.run(
                intake.store.active_partitions,
                intake.position,
                self.settled,
                apply,
                intake.lock,
                pause_faust_fetching,
                advance,
            )

        async def stop_reading(*_: Any, **__: Any) -> None:
            async with intake.lock:  # a batch being applied finishes before partitions move
                reader.invalidate()

        async def read_again(*_: Any, **__: Any) -> None:
            reader.invalidate()

        async def drain(stream: Any) -> None:
            await intake.drain(stream)

        app.agent(channel, name=agent)(drain)
        app.task(read)
        app.on_partitions_revoked.connect(stop_reading)
        app.on_partitions_assigned.connect(read_again)
        self.close_when_stopping(reader)
        return reader

    def close_when_stopping(self, *resources: Any) -> None:
        """Close each of ``resources`` (its ``close()`` coroutine) when the worker stops."""

        async def close_on_stop() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                for resource in resources:
                    await resource.close()

        self.app.task(close_on_stop)


@dataclass
class DeliveryRuntime:
    """What the delivery agent needs, built from the config and the environment."""

    provider: Provider
    pacer: Pacer
    sender: Sender
    tokens: UnsubscribeTokens
    retry: RetryPolicy
    concurrency: int
    fair: FairPacer
    # per configured tenant whose settings differ from the defaults'
    providers: dict[str, Provider] = field(default_factory=dict)
    senders: dict[str, Sender] = field(default_factory=dict)

    def provider_for(self, tenant: str) -> Provider:
        return self.providers.get(tenant, self.provider)

    def sender_for(self, tenant: str) -> Sender:
        return self.senders.get(tenant, self.sender)

    def all_providers(self) -> list[Provider]:
        return [self.provider, *self.providers.values()]


def _sender(cfg: Config, web_url: str) -> Sender:
    d = cfg.delivery
    return Sender(
        from_address=d.from_address,
        reply_to=d.reply_to,
        message_id_domain=d.message_id_domain or Sender.domain_of(d.from_address),
        public_url=d.public_url or web_url,
        unsubscribe_mailto=d.unsubscribe_mailto,
    )


def unsubscribe_tokens(config: Config, env: Mapping[str, str]) -> UnsubscribeTokens:
    """The signer of one-click unsubscribe links; its secret must be set and long enough."""
    var = config.delivery.unsubscribe_secret_env
    secret = env.get(var)
    if not secret or len(secret) < 16:
        raise ConfigError(
            f"delivery.unsubscribe_secret_env: set ${var} to a random secret of 16 or more"
            " characters; it signs the one-click unsubscribe links (every worker needs the"
            " same one)"
        )
    return UnsubscribeTokens(secret)


def delivery_runtime(config: Config, env: Mapping[str, str]) -> DeliveryRuntime:
    d = config.delivery
    quotas = config.tenancy().quotas
    pacer = Pacer(
        d.rate_limit,
        d.burst or d.rate_limit,
        d.domain_limits,
        d.warmup.daily_caps if d.warmup else (),
        d.warmup.start if d.warmup else None,
    )
    rt = DeliveryRuntime(
        provider=build_provider(config, env),
        pacer=pacer,
        sender=_sender(config, config.web_url),
        tokens=unsubscribe_tokens(config, env),
        retry=RetryPolicy(d.retry.max_attempts, d.retry.base, d.retry.max_delay),
        concurrency=d.concurrency,
        fair=FairPacer(pacer, {name: q.rate_share for name, q in quotas.items()}),
    )
    for name in config.tenants:
        own = config.tenant(name)
        if own.delivery != config.delivery or own.providers != config.providers:
            rt.providers[name] = build_provider(own, env)
            rt.senders[name] = _sender(own, config.web_url)
    return rt


def webhook_handlers(config: Config, env: Mapping[str, str]) -> dict[str, Any]:
    """A verifier and parser per configured provider webhook, keyed by provider name."""
    from mailstream.feedback.provider_webhooks import build_webhooks

    hooks = config.webhooks
    return build_webhooks(
        {"sendgrid": hooks.sendgrid, "mailgun": hooks.mailgun, "postmark": hooks.postmark}, env
    )
