"""Email providers behind one interface (mailstream.providers.base.Provider)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mailstream.providers.base import Provider

if TYPE_CHECKING:
    from mailstream.config.schema import Config


def build_provider(config: Config, env: Mapping[str, str]) -> Provider:
    """The provider ``delivery.provider`` names, with its ``providers.*`` settings."""
    from mailstream.config.provider_settings import PostmarkSettings, SendGridSettings
    from mailstream.providers.eml_files import OutboxProvider
    from mailstream.providers.mailgun import MailgunProvider
    from mailstream.providers.postmark import PostmarkProvider
    from mailstream.providers.sendgrid import SendGridProvider
    from mailstream.providers.smtp import SmtpProvider

    name = config.delivery.provider
    chosen = config.providers
    if name == "outbox":
        return OutboxProvider(chosen.outbox)
    if name == "smtp":
        assert chosen.smtp is not None, "checked by the config"
        return SmtpProvider(chosen.smtp, env, config_key="providers.smtp")
    if name == "postmark":
        return PostmarkProvider(chosen.postmark or PostmarkSettings(), env)
    if name == "sendgrid":
        return SendGridProvider(chosen.sendgrid or SendGridSettings(), env)
    assert chosen.mailgun is not None, "checked by the config"
    return MailgunProvider(chosen.mailgun, env)
