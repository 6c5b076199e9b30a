"""Settings of the HTTP email providers; pydantic only, so the config can import them cheaply."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from mailstream.config.durations import parse_duration

_URL = re.compile(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_DOMAIN = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def _base_url(value: str) -> str:
    if not _URL.match(value):
        raise ValueError(
            f"{value!r} is not an API address: use http(s)://host[:port][/path], "
            "without credentials, query or fragment"
        )
    return value.rstrip("/")


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        # the value is not echoed: it may be a key pasted where its variable's name belongs
        raise ValueError(
            "expected the NAME of an environment variable (letters, digits, _), "
            "e.g. SENDGRID_API_KEY, never the key itself"
        )
    return value


def _domain(value: str) -> str:
    if len(value) > 253 or not _DOMAIN.match(value):
        raise ValueError(f"{value!r} is not a domain name such as mg.example.com")
    return value.lower()


BaseUrl = Annotated[str, AfterValidator(_base_url)]
# Names, never values: the keys themselves live only in the environment.
EnvName = Annotated[str, AfterValidator(_env_name)]
Timeout = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=300)]
StreamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,100}$")]


class _ProviderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class PostmarkSettings(_ProviderSettings):
    """``POST {base_url}/email`` with ``X-Postmark-Server-Token``."""

    base_url: BaseUrl = "https://api.postmarkapp.com"
    # the variable holding a server token (an account token is refused by /email)
    api_key_env: EnvName = "POSTMARK_SERVER_TOKEN"
    timeout: Timeout = 10.0
    # Postmark keeps transactional and broadcast mail on separate streams of one server
    message_stream_transactional: StreamId = "outbound"
    message_stream_marketing: StreamId = "broadcast"


class SendGridSettings(_ProviderSettings):
    """``POST {base_url}/v3/mail/send`` with ``Authorization: Bearer``."""

    # EU-pinned subusers use https://api.eu.sendgrid.com
    base_url: BaseUrl = "https://api.sendgrid.com"
    api_key_env: EnvName = "SENDGRID_API_KEY"
    timeout: Timeout = 10.0


class MailgunSettings(_ProviderSettings):
    """``POST {base_url}/v3/{domain}/messages`` with HTTP basic auth ``api:KEY``."""

    # domains in Mailgun's EU region use https://api.eu.mailgun.net
    base_url: BaseUrl = "https://api.mailgun.net"
    api_key_env: EnvName = "MAILGUN_API_KEY"
    timeout: Timeout = 10.0
    # the sending domain as registered in Mailgun, e.g. mg.example.com
    domain: Annotated[str, AfterValidator(_domain)]
