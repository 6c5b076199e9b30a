"""Provider webhooks, verified and normalised: a request and the time in, Feedback out,
as Claims the replay guard lets through once (mailstream.webhooks.replay).

Pure: no I/O, no clock. The web layer enforces MAX_BODY (413), calls ``handle`` and answers
a WebhookRejected with its status. SendGrid's handler needs ``cryptography``; it is
imported on first use, so importing the settings stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mailstream.exceptions import ConfigError
from mailstream.webhooks.base import (
    MAX_BODY,
    WebhookHandler,
    WebhookRejected,
    WebhookRequest,
)
from mailstream.webhooks.mailgun import MailgunWebhook
from mailstream.webhooks.postmark import PostmarkWebhook
from mailstream.webhooks.replay import Claim, feedback_of
from mailstream.webhooks.settings import (
    MailgunWebhookSettings,
    PostmarkWebhookSettings,
    SendGridWebhookSettings,
)

if TYPE_CHECKING:
    from mailstream.webhooks.sendgrid import SendGridWebhook

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
        from mailstream.webhooks.sendgrid import SendGridWebhook

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
            from mailstream.webhooks.sendgrid import SendGridWebhook

            handlers[name] = SendGridWebhook(settings, env, config_key=config_key)
        elif isinstance(settings, MailgunWebhookSettings):
            handlers[name] = MailgunWebhook(settings, env, config_key=config_key)
        elif isinstance(settings, PostmarkWebhookSettings):
            handlers[name] = PostmarkWebhook(settings, env, config_key=config_key)
    return handlers
