"""The worker's shared pieces, built once from the config: workflows, policy, effects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailstream.app import config
from mailstream.apply import EffectsApplier
from mailstream.automation import Automation
from mailstream.compose import Sender
from mailstream.delivery import RetryPolicy
from mailstream.engine import Engine
from mailstream.exceptions import ConfigError
from mailstream.policy import Policy
from mailstream.providers import build_provider
from mailstream.providers.base import Provider
from mailstream.ratelimit import Pacer
from mailstream.suppression_list import GlobalSuppressionList
from mailstream.templates import DEFAULT_TEMPLATE_DIR, Templates
from mailstream.unsubscribe import UnsubscribeTokens
from tables.timers import timers

suppression_list = GlobalSuppressionList(
    config.bootstrap_servers, config.topics.suppression, config.data_dir / "suppression-list"
)
automation = Automation(
    Engine(config.compiled_workflows()),
    Policy(config.policy.settings(), listed=suppression_list.get),
)
templates = Templates(config.templates_dir or DEFAULT_TEMPLATE_DIR)
applier = EffectsApplier(
    templates,
    timers,
    {
        "transactional": config.topics.sends_transactional,
        "marketing": config.topics.sends_marketing,
    },
    config.topics.dlq,
    config.topics.webhooks,
)


@dataclass
class DeliveryRuntime:
    """What the delivery agent needs, built from the config and the environment."""

    provider: Provider
    pacer: Pacer
    sender: Sender
    tokens: UnsubscribeTokens
    retry: RetryPolicy
    concurrency: int


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
    return DeliveryRuntime(
        provider=build_provider(config, env),
        pacer=Pacer(
            d.rate_limit,
            d.burst or d.rate_limit,
            d.domain_limits,
            d.warmup.daily_caps if d.warmup else (),
            d.warmup.start if d.warmup else None,
        ),
        sender=Sender(
            from_address=d.from_address,
            reply_to=d.reply_to,
            message_id_domain=d.message_id_domain or Sender.domain_of(d.from_address),
            public_url=d.public_url or config.web_url,
            unsubscribe_mailto=d.unsubscribe_mailto,
        ),
        tokens=unsubscribe_tokens(env),
        retry=RetryPolicy(d.retry.max_attempts, d.retry.base, d.retry.max_delay),
        concurrency=d.concurrency,
    )


def webhook_handlers(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """A verifier and parser per configured provider webhook, keyed by provider name."""
    from mailstream.webhooks import build_webhooks

    hooks = config.webhooks
    return build_webhooks(
        {"sendgrid": hooks.sendgrid, "mailgun": hooks.mailgun, "postmark": hooks.postmark}, env
    )
