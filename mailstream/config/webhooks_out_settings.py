"""The ``webhooks_out`` config section: the endpoints webhook steps call, by name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from mailstream.config.durations import parse_duration
from mailstream.delivery.state_machine import RetryPolicy
from mailstream.exceptions import ConfigError
from mailstream.webhooks_out.circuit_breaker import BreakerSettings

Seconds = Annotated[float, BeforeValidator(parse_duration)]
MIN_SECRET = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffConfig(_Section):
    base: Annotated[Seconds, Field(gt=0)] = 1.0  # the first retry waits about this long
    max_delay: Annotated[Seconds, Field(gt=0)] = 300.0


class BreakerConfig(_Section):
    failures: int = Field(5, ge=1, le=1000)  # consecutive failures that open it
    cool_down: Annotated[Seconds, Field(gt=0)] = 30.0  # open this long, then one probe


class WebhookEndpoint(_Section):
    url: str = Field(pattern=r"^https?://\S+$")
    # the NAME of the variable holding the signing secret
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout: Annotated[Seconds, Field(gt=0, le=300)] = 10.0
    retries: int = Field(5, ge=0, le=100)  # after the first attempt, for 5xx, 408, 429, timeouts
    backoff: BackoffConfig = BackoffConfig()
    breaker: BreakerConfig = BreakerConfig()
    # a call not made by then (held by the breaker, or retrying) fails as expired
    give_up_after: Annotated[Seconds, Field(gt=0)] = 86400.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint ready to call: its settings, with the secret read from the environment."""

    name: str
    url: str
    secret: bytes
    timeout: float
    retry: RetryPolicy
    breaker: BreakerSettings
    give_up_after_ms: int

    def __repr__(self) -> str:  # never the secret
        return f"Endpoint(name={self.name!r}, url={self.url!r})"


def build_endpoints(
    configured: Mapping[str, WebhookEndpoint], env: Mapping[str, str] = os.environ
) -> dict[str, Endpoint]:
    """Every endpoint with its secret; a ConfigError naming the key and the variable
    when a secret is missing or too short."""
    endpoints = {}
    for name, c in configured.items():
        secret = env.get(c.secret_env, "")
        if len(secret) < MIN_SECRET:
            state = "is not set" if c.secret_env not in env else "is too short"
            raise ConfigError(
                f"webhooks_out.{name}.secret_env: the environment variable {c.secret_env}"
                f" {state}; set it to a random secret of {MIN_SECRET} or more characters"
                " (the receiver checks the signature with it)"
            )
        endpoints[name] = Endpoint(
            name=name,
            url=c.url,
            secret=secret.encode(),
            timeout=c.timeout,
            retry=RetryPolicy(c.retries + 1, c.backoff.base, c.backoff.max_delay),
            breaker=BreakerSettings(c.breaker.failures, c.breaker.cool_down),
            give_up_after_ms=int(c.give_up_after * 1000),
        )
    return endpoints
