"""Settings of the provider webhooks; pydantic only, so the config imports them cheaply."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from mailstream.config.durations import parse_duration
from mailstream.config.provider_settings import EnvName

# How far a signed timestamp may be from our clock, either way. A day at most: the
# replay memory has to hold every token for twice this long.
MaxAge = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=86400)]


class _WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SendGridWebhookSettings(_WebhookSettings):
    """SendGrid's Signed Event Webhook: ECDSA P-256 over timestamp + body."""

    # the variable holding the verification key shown under Mail Settings > Signed Event
    # Webhook Requests (base64 DER, as SendGrid shows it, or PEM)
    public_key_env: EnvName = "SENDGRID_WEBHOOK_PUBLIC_KEY"
    max_age: MaxAge = 300.0


class MailgunWebhookSettings(_WebhookSettings):
    """Mailgun webhooks: HMAC-SHA256 of timestamp + token with the webhook signing key."""

    # the variable holding the "HTTP webhook signing key" (not the API key)
    signing_key_env: EnvName = "MAILGUN_WEBHOOK_SIGNING_KEY"
    max_age: MaxAge = 300.0


class PostmarkWebhookSettings(_WebhookSettings):
    """Postmark webhooks: HTTP basic auth with the credentials set on the webhook URL."""

    username_env: EnvName = "POSTMARK_WEBHOOK_USERNAME"
    password_env: EnvName = "POSTMARK_WEBHOOK_PASSWORD"  # noqa: S105 - the variable's name
