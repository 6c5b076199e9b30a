"""The sections of ``mailstream.yaml`` that run the deployment: broker, topics, ingest,
delivery, providers, feedback, webhooks, web, cluster and retention."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from mailstream.config.durations import parse_duration
from mailstream.config.provider_settings import (
    EnvName,
    MailgunSettings,
    PostmarkSettings,
    SendGridSettings,
)
from mailstream.config.webhook_settings import (
    MailgunWebhookSettings,
    PostmarkWebhookSettings,
    SendGridWebhookSettings,
)
from mailstream.core.events import Limits
from mailstream.providers.eml_files import OutboxSettings
from mailstream.providers.smtp import SmtpSettings

Seconds = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    """A config section: unknown keys are errors, and values never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestLimits(Section):
    """What an event may carry (mailstream.core.events.Limits); an event over one is
    dead-lettered with the field and the limit."""

    # nesting of objects and arrays in payload and metadata, the object itself being 1
    max_depth: int = Field(16, ge=1, le=64)
    # keys in any one object of payload or metadata
    max_keys: int = Field(256, ge=1, le=100_000)
    # keys in payload and metadata together
    max_total_keys: int = Field(2048, ge=1, le=1_000_000)
    # characters of any string value or key in payload or metadata
    max_string_chars: int = Field(16_384, ge=16, le=10_000_000)
    # items of any one array in payload or metadata
    max_list_items: int = Field(1_000, ge=1, le=1_000_000)
    # traits a user may have; an identify that would exceed it is dead-lettered
    max_traits: int = Field(200, ge=5, le=100_000)
    # bytes of a user record (less its dedup memory) once an identify is applied; an
    # identify that would go over it and adds traits or bytes is dead-lettered
    max_user_record_bytes: int = Field(131_072, ge=4096, le=900_000)

    def limits(self) -> Limits:
        return Limits(**self.model_dump())


def _only_direct_read(value: bool) -> bool:
    if not value:
        raise ValueError(
            "false is no longer supported: mailstream reads with its own batch reader"
            " only (mailstream.kafka.direct_reader); delete the key"
        )
    return value


# Kept only so that files written for earlier releases still load: true is the one path.
DirectRead = Annotated[bool, AfterValidator(_only_direct_read)]


class IngestConfig(Section):
    dedup_window: Seconds = 86400.0
    # Bounds a single user's dedup memory even inside the window.
    dedup_max_ids_per_user: int = Field(20_000, ge=16)
    max_event_bytes: int = Field(65_536, ge=256, le=10_000_000)
    batch_size: int = Field(1000, ge=1, le=100_000)
    batch_within: Seconds = 0.05
    # The events topic is read with mailstream's own batch consumer, from the progress
    # records (mailstream.kafka.direct_reader); Faust's stream is no longer an option.
    direct_read: DirectRead = True
    # Decoded user states kept between batches (mailstream.state.user_cache); 0: none.
    # Roughly 4 KB of memory each.
    user_cache: int = Field(10_000, ge=0, le=10_000_000)
    default_tenant: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # events of a tenant not under `tenants:`: dead_letter (reason unknown_tenant) or
    # allow (default settings); unset: dead_letter once `tenants:` names any, else allow
    unknown_tenants: Literal["dead_letter", "allow"] | None = None
    # how large an event's payload and metadata, and a user record, may grow
    limits: IngestLimits = IngestLimits()


class ProvidersConfig(Section):
    outbox: OutboxSettings = OutboxSettings()
    smtp: SmtpSettings | None = None
    postmark: PostmarkSettings | None = None
    sendgrid: SendGridSettings | None = None
    mailgun: MailgunSettings | None = None


class RetryConfig(Section):
    max_attempts: int = Field(5, ge=1, le=100)
    base: Annotated[Seconds, Field(gt=0)] = 2.0  # the first retry waits about this long
    max_delay: Annotated[Seconds, Field(gt=0)] = 600.0


class WarmupConfig(Section):
    start: date  # day 1 of the schedule
    daily_caps: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


PROVIDERS = ("outbox", "smtp", "postmark", "sendgrid", "mailgun")


class DeliveryConfig(Section):
    enabled: bool = True  # false: this deployment only emits send commands
    provider: Literal["outbox", "smtp", "postmark", "sendgrid", "mailgun"] = "outbox"
    from_address: str = Field("mailstream <mailstream@localhost>", min_length=3)
    reply_to: str | None = None
    # Message-IDs are <send_id@this>; default: the from address's domain
    message_id_domain: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]{1,253}$")
    rate_limit: float = Field(50.0, gt=0)  # sends per second, for the whole deployment
    burst: float | None = Field(None, ge=1)  # default: one second's worth
    # recipient domain -> sends per second, e.g. {gmail.com: 20}
    domain_limits: dict[str, Annotated[float, Field(gt=0)]] = {}
    warmup: WarmupConfig | None = None
    retry: RetryConfig = RetryConfig()
    concurrency: int = Field(16, ge=1, le=1000)  # provider calls in flight per worker
    # Send commands are read with mailstream's batch reader (mailstream.kafka.direct_reader),
    # the ones this worker writes taken as they are acknowledged; Faust's stream is no
    # longer an option.
    direct_read: DirectRead = True
    # where one-click unsubscribe links point; default: this worker's web address
    public_url: str | None = Field(None, pattern=r"^https?://\S+$")
    unsubscribe_mailto: str | None = None
    # the NAME of the variable holding the secret that signs unsubscribe links
    unsubscribe_secret_env: str = Field(
        "MAILSTREAM_UNSUBSCRIBE_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    # a rendered send command over this many bytes is not sent but dead-lettered as a
    # render failure; below the producer's 1,000,000-byte request limit, with room to spare
    max_message_bytes: int = Field(900_000, ge=16_384, le=960_000)


class FeedbackConfig(Section):
    soft_bounces: int = Field(3, ge=1, le=100)  # this many soft bounces ...
    soft_bounce_window: Annotated[Seconds, Field(gt=0)] = 7 * 86400.0  # ... within this


class WebhooksConfig(Section):
    """Which provider webhooks this deployment accepts (POST /webhooks/{provider})."""

    sendgrid: SendGridWebhookSettings | None = None
    mailgun: MailgunWebhookSettings | None = None
    postmark: PostmarkWebhookSettings | None = None


class WebConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(6066, ge=1, le=65535)
    # The address other workers use to reach this one; defaults to http://host:port.
    canonical_url: str | None = None
    # the NAME of the variable holding the admin token (dashboard and API)
    admin_token_env: str = Field("MAILSTREAM_ADMIN_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # the NAME of a variable holding a token for /metrics; unset: /metrics is open
    metrics_token_env: str = Field("MAILSTREAM_METRICS_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # how often each worker counts the enrollments waiting at each step, for the funnel
    funnel_every: Annotated[Seconds, Field(ge=5)] = 60.0
    # false: session cookies without Secure, so logging in works over plain http (only
    # on a network you trust; browsers keep Secure cookies only over https or localhost)
    cookie_secure: bool = True
    # login attempts a worker takes per minute from one client address, and from all
    login_attempts_per_client: int = Field(10, ge=1, le=10_000)
    login_attempts_overall: int = Field(60, ge=1, le=100_000)
    # a connection must send a request's headers within this, and is closed when idle
    # this long between requests (against slow-header attacks); longer than the 15 s
    # aiohttp clients (other workers) keep an idle connection, so they drop it first
    header_timeout: Annotated[Seconds, Field(ge=0.1, le=3600)] = 20.0


class HttpIngestConfig(Section):
    """``POST /v1/track``, ``/v1/identify`` and ``/v1/batch``: Segment-shaped events over
    HTTP, for apps without a Kafka producer (see docs/http-ingest.md)."""

    enabled: bool = False
    # tenant -> the NAME of the variable holding that tenant's write key (16 or more
    # characters); a request's key decides its events' tenant
    write_keys_env: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], EnvName] = {
        "default": "MAILSTREAM_WRITE_KEY"
    }
    # events a second each write key may send, and how many at once
    events_per_second: float = Field(2000.0, gt=0)
    burst: float = Field(4000.0, ge=1)
    # a larger body is refused with 413 (Segment's own limit for a batch is 500 KB)
    max_body_bytes: int = Field(512_000, ge=1024, le=16_000_000)


class ClusterConfig(Section):
    """How the workers of one deployment trust each other (see docs/security.md)."""

    # the NAME of the variable holding the cluster secret (32 characters or more, the
    # same on every worker): it signs internal commands and forwarded requests
    secret_env: str = Field("MAILSTREAM_CLUSTER_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # how old a forwarded request's signature may be (the workers' clocks must agree)
    request_max_age: Annotated[Seconds, Field(gt=0, le=600)] = 30.0


class RetentionConfig(Section):
    """How long finished records are kept (see docs/robustness.md). Deleting a record
    forgets its id: a send command with that send id (or a webhook command with that
    webhook id) arriving again afterwards would be taken as new. So each must be at
    least ingest.dedup_window, and should be well beyond the events topic's retention."""

    # deliveries in a final state (sent, failed, dropped, unknown, dead_lettered)
    deliveries: Annotated[Seconds, Field(gt=0)] = 30 * 86400.0
    # finished webhook calls (sent, failed, dead_lettered)
    webhook_calls: Annotated[Seconds, Field(gt=0)] = 30 * 86400.0
    sweep_every: Annotated[Seconds, Field(ge=1, le=86400)] = 60.0
    # records read per owned partition and table in one sweep: bounds each sweep's work
    sweep_batch: int = Field(2000, ge=10, le=1_000_000)
