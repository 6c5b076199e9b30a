"""Provider webhooks, verified and normalised: a request and the time in, Feedback out,
as Claims the replay guard lets through once (mailstream.feedback.replay_guard).

Pure: no I/O, no clock. The web layer enforces MAX_BODY (413), calls ``handle`` and answers
a WebhookRejected with its status. SendGrid's handler needs ``cryptography``; it is
imported on first use, so importing the settings stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mailstream.config.webhook_settings import (
    MailgunWebhookSettings,
    PostmarkWebhookSettings,
    SendGridWebhookSettings,
)
from mailstream.exceptions import ConfigError
from mailstream.feedback.mailgun_webhook import MailgunWebhook
from mailstream.feedback.postmark_webhook import PostmarkWebhook
from mailstream.feedback.replay_guard import Claim, feedback_of
from mailstream.feedback.webhook_base import (
    MAX_BODY,
    WebhookHandler,
    WebhookRejected,
    WebhookRequest,
)

if TYPE_CHECKING:
    from mailstream.feedback.sendgrid_webhook import SendGridWebhook

__all__ = [
    "MAX_BODY",
    "Claim",
    "MailgunWebhook",
    "MailgunWebhookSettings",
    "PostmarkWebhook",
    "PostmarkWebhookSettings",
    "SendGridWebhook",
    "SendGridWebhookSettings",
    "WebhookHandler",
    "WebhookRejected",
    "WebhookRequest",
    "build_webhooks",
    "feedback_of",
]

_SETTINGS: dict[str, type[BaseModel]] = {
    "sendgrid": SendGridWebhookSettings,
    "mailgun": MailgunWebhookSettings,
    "postmark": PostmarkWebhookSettings,
}


def __getattr__(name: str) -> Any:
    if name == "SendGridWebhook":
        from mailstream.feedback.sendgrid_webhook import SendGridWebhook

        return SendGridWebhook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_webhooks(
    settings_by_provider: Mapping[str, BaseModel | None], env: Mapping[str, str]
) -> dict[str, WebhookHandler]:
    """A handler per configured provider (settings not None), keyed by provider name.

    Reads every secret now, so a missing one is a ConfigError at start-up naming the key
    ``webhooks.<provider>.<field>`` and the variable, not a 500 on the first webhook.
    """
    handlers: dict[str, WebhookHandler] = {}
    for name, settings in settings_by_provider.items():
        if settings is None:
            continue
        expected = _SETTINGS.get(name)
        if expected is None:
            raise ConfigError(
                f"webhooks.{name}: no such provider webhook; use one of {', '.join(_SETTINGS)}"
            )
        if not isinstance(settings, expected):
            raise ConfigError(f"webhooks.{name}: expected {expected.__name__} settings")
        config_key = f"webhooks.{name}"
        if isinstance(settings, SendGridWebhookSettings):
            from mailstream.feedback.sendgrid_webhook import SendGridWebhook

            handlers[name] = SendGridWebhook(settings, env, config_key=config_key)
        elif isinstance(settings, MailgunWebhookSettings):
            handlers[name] = MailgunWebhook(settings, env, config_key=config_key)
        elif isinstance(settings, PostmarkWebhookSettings):
            handlers[name] = PostmarkWebhook(settings, env, config_key=config_key)
    return handlers
