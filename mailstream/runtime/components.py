"""The worker's shared pieces, built once from the config: workflows, policy, effects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailstream.app import config
from mailstream.config.schema import Config
from mailstream.core.cluster_trust import cluster_key
from mailstream.core.tenants import OTHER_LABEL
from mailstream.delivery.compose import Sender
from mailstream.delivery.fair_share import FairPacer
from mailstream.delivery.pacing import Pacer
from mailstream.delivery.state_machine import RetryPolicy
from mailstream.delivery.unsubscribe_links import UnsubscribeTokens
from mailstream.exceptions import ConfigError
from mailstream.providers import build_provider
from mailstream.providers.base import Provider
from mailstream.suppression.global_list import GlobalSuppressionList
from mailstream.workflows.apply_effects import EffectsApplier
from mailstream.workflows.automation import Automation
from mailstream.workflows.engine import Engine
from mailstream.workflows.send_policy import Policy
from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates
from tables.timers import timers

suppression_list = GlobalSuppressionList(
    config.bootstrap_servers, config.topics.suppression, config.data_dir / "suppression-list"
)
tenancy = config.tenancy()
# signs the commands this worker writes and the lookups it forwards (mailstream.core.cluster_trust)
cluster = cluster_key(config.cluster.secret_env, os.environ)


def _automation(cfg: Config) -> Automation:
    return Automation(
        Engine(cfg.compiled_workflows()),
        Policy(cfg.policy.settings(), listed=suppression_list.get),
    )


def _applier(cfg: Config, label: str) -> EffectsApplier:
    return EffectsApplier(
        Templates(cfg.templates_dir or DEFAULT_TEMPLATE_DIR),
        timers,
        {
            "transactional": config.topics.sends_transactional,
            "marketing": config.topics.sends_marketing,
        },
        config.topics.dlq,
        config.topics.webhooks,
        tenant_label=label,
        cluster=cluster,
        max_message_bytes=cfg.delivery.max_message_bytes,
    )


# The default settings, and each configured tenant's own (workflows, policy, templates).
automation = _automation(config)
applier = _applier(config, tenancy.label(config.ingest.default_tenant))
_automations = {name: _automation(config.tenant(name)) for name in config.tenants}
_appliers = {name: _applier(config.tenant(name), name) for name in config.tenants}
# Unconfigured tenants (when allowed) run with the defaults, labelled (other).
_other_applier = _applier(config, OTHER_LABEL)


def automation_for(tenant: str) -> Automation:
    return _automations.get(tenant, automation)


def workflow_names() -> set[str]:
    """Every workflow configured, by default or for any tenant (named alike, counted
    as one in workflow health)."""
    names = set(automation.engine.workflows)
    for tenant_automation in _automations.values():
        names.update(tenant_automation.engine.workflows)
    return names


def applier_for(tenant: str) -> EffectsApplier:
    found = _appliers.get(tenant)
    if found is not None:
        return found
    return applier if tenant == config.ingest.default_tenant else _other_applier


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


def _sender(cfg: Config) -> Sender:
    d = cfg.delivery
    return Sender(
        from_address=d.from_address,
        reply_to=d.reply_to,
        message_id_domain=d.message_id_domain or Sender.domain_of(d.from_address),
        public_url=d.public_url or config.web_url,
        unsubscribe_mailto=d.unsubscribe_mailto,
    )


def unsubscribe_tokens(env: Mapping[str, str] = os.environ) -> UnsubscribeTokens:
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


def delivery_runtime(env: Mapping[str, str] = os.environ) -> DeliveryRuntime:
    d = config.delivery
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
        sender=_sender(config),
        tokens=unsubscribe_tokens(env),
        retry=RetryPolicy(d.retry.max_attempts, d.retry.base, d.retry.max_delay),
        concurrency=d.concurrency,
        fair=FairPacer(pacer, {name: q.rate_share for name, q in tenancy.quotas.items()}),
    )
    for name in config.tenants:
        own = config.tenant(name)
        if own.delivery != config.delivery or own.providers != config.providers:
            rt.providers[name] = build_provider(own, env)
            rt.senders[name] = _sender(own)
    return rt


def webhook_handlers(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """A verifier and parser per configured provider webhook, keyed by provider name."""
    from mailstream.feedback.provider_webhooks import build_webhooks

    hooks = config.webhooks
    return build_webhooks(
        {"sendgrid": hooks.sendgrid, "mailgun": hooks.mailgun, "postmark": hooks.postmark}, env
    )
