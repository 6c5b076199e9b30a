"""Load and validate ``mailstream.yaml``; every error names the key path and the reason."""

from __future__ import annotations

import copy
import logging
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from mailstream.config.durations import parse_duration
from mailstream.config.provider_settings import MailgunSettings, PostmarkSettings, SendGridSettings
from mailstream.config.webhook_settings import (
    MailgunWebhookSettings,
    PostmarkWebhookSettings,
    SendGridWebhookSettings,
)
from mailstream.config.webhooks_out_settings import WebhookEndpoint
from mailstream.core.events import Limits
from mailstream.core.tenants import Quota, Tenancy
from mailstream.core.windows import Cap, QuietHours, SamplingRule, ThrottleRule, parse_clock, zone
from mailstream.exceptions import ConfigError
from mailstream.providers.eml_files import OutboxSettings
from mailstream.providers.smtp import SmtpSettings
from mailstream.workflows.send_policy import PolicySettings
from mailstream.workflows.spec import Workflow, WorkflowSpec, compile_workflow

CONFIG_ENV = "MAILSTREAM_CONFIG"

logger = logging.getLogger(__name__)

Seconds = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# one or more host:port, comma-separated, after kafka://
BROKER_URL_PATTERN = r"^kafka://[^\s/]+(,[^\s/]+)*$"


class BrokerConfig(_Section):
    url: str = Field("kafka://127.0.0.1:9092", pattern=BROKER_URL_PATTERN)
    # tansu answers ListOffsets(latest) wrongly for multi-record batches, which makes
    # Faust's table recovery miss the tail of a changelog; on the embedded broker its
    # recovery reads to the end offsets a fetch reports (mailstream.kafka.embedded_broker).
    embedded: bool = True
    # How long the consumer's fetch waits for data. Faust asks for 1.5 s, and Kafka
    # answers as soon as data arrives; tansu waits out the full time, which would add
    # up to that much to every hop. Default on the embedded broker: 0.02 s for fetches on
    # the way from an event to its send, 0.2 s for the others; else Faust's.
    fetch_max_wait: Seconds | None = None
    # How the worker compresses the record batches it writes (table changelogs, send
    # commands, dead letters): each event writes about three times its own size. lz4
    # costs the worker 2 to 3 % more CPU and takes about a third off the broker's CPU per
    # event; worth it where the broker's network and disks are the limit.
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "none"
    rebalance_timeout: Seconds = 3.0
    # tansu holds a joining member for half the session timeout, so every worker start
    # and every takeover after a crash waits about this long over two.
    session_timeout: Seconds = 6.0
    heartbeat_interval: Seconds = 1.0
    # A worker that has not reached the broker for this long exits non-zero, saying so
    # (``/health`` reports it not ready within seconds; see docs/robustness.md).
    lost_after: Annotated[Seconds, Field(ge=5, le=86400)] = 60.0

    @property
    def compression_type(self) -> str | None:
        """The codec for the producer's ``compression_type`` (None: uncompressed)."""
        return None if self.compression == "none" else self.compression


class TopicsConfig(_Section):
    partitions: int = Field(4, ge=1, le=1024)
    replication: int = Field(1, ge=1, le=16)
    events: str = Field("mailstream.events", min_length=1)
    dlq: str = Field("mailstream.dlq", min_length=1)
    sends_transactional: str = Field("mailstream.sends.transactional", min_length=1)
    sends_marketing: str = Field("mailstream.sends.marketing", min_length=1)
    feedback: str = Field("mailstream.feedback", min_length=1)
    suppression: str = Field("mailstream.suppression", min_length=1)
    # webhook step commands, keyed by user id (see docs/webhook-step.md)
    webhooks: str = Field("mailstream.webhooks", min_length=1)
    # verified provider webhooks on their way to the replay guard, keyed by replay key
    feedback_claims: str = Field("mailstream.feedback.claims", min_length=1)
    # dashboard sessions logged out before they expired, read whole by every worker
    sessions: str = Field("mailstream.sessions", min_length=1)

    def all_names(self) -> list[str]:
        return [
            self.events,
            self.dlq,
            self.sends_transactional,
            self.sends_marketing,
            self.feedback,
            self.suppression,
            self.webhooks,
            self.feedback_claims,
            self.sessions,
        ]


class IngestLimits(_Section):
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


class IngestConfig(_Section):
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


EventType = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


def _not_identify(rules: dict[str, Any]) -> dict[str, Any]:
    if "identify" in rules:
        raise ValueError(
            "identify events carry traits and consent and are never sampled or throttled"
        )
    return rules


class SignificantChange(_Section):
    # a dotted path into the payload, e.g. `price` or `cart.total`
    field: str = Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # numbers: the smallest difference that counts (0: any); other values: any change
    threshold: float = Field(0.0, ge=0)


class SamplingConfig(_Section):
    rate: float = Field(1.0, ge=0.0, le=1.0)
    min_interval: Seconds = 0.0
    significant_change: SignificantChange | None = None

    def rule(self) -> SamplingRule:
        change = self.significant_change
        return SamplingRule(
            rate=self.rate,
            min_interval_ms=int(self.min_interval * 1000),
            watch=tuple(change.field.split(".")) if change else None,
            threshold=change.threshold if change else 0.0,
        )


class ThrottleConfig(_Section):
    limit: int = Field(ge=1, le=10_000)
    per: Annotated[Seconds, Field(gt=0)]

    def rule(self) -> ThrottleRule:
        return ThrottleRule(self.limit, int(self.per * 1000))


def _cap_period(value: object) -> object:
    return value if value in ("day", "week") else parse_duration(value)


class CapConfig(_Section):
    max: int = Field(ge=1, le=1000)
    # `day` or `week`: the user's calendar day or week (from Monday), in their time zone;
    # a duration (`24h`, `7d`): a sliding window
    per: Annotated[
        Literal["day", "week"] | Annotated[float, Field(gt=0)], BeforeValidator(_cap_period)
    ]

    def cap(self) -> Cap:
        if self.per == "day" or self.per == "week":
            return Cap(self.max, calendar=self.per)
        return Cap(self.max, per_ms=int(self.per * 1000))


def _clock(value: str) -> str:
    parse_clock(value)
    return value


Clock = Annotated[str, AfterValidator(_clock)]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except Exception:
        raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Paris") from None
    return value


class QuietHoursConfig(_Section):
    start: Clock  # local time the window opens, e.g. 21:00
    end: Clock  # and closes, e.g. 08:00 (a window may cross midnight)


class ConsentConfig(_Section):
    # opt_in: marketing needs consent.marketing true; opt_out: only false stops it
    marketing: Literal["opt_in", "opt_out"] = "opt_in"
    # per value of the region trait (case-insensitive), e.g. {EU: opt_in, US: opt_out}
    by_region: dict[str, Literal["opt_in", "opt_out"]] = {}
    region_trait: str = Field("region", min_length=1)


class FrequencyCapsConfig(_Section):
    caps: list[CapConfig] = []
    when_capped: Literal["defer", "drop"] = "defer"


class PolicyConfig(_Section):
    consent: ConsentConfig = ConsentConfig()
    frequency_caps: FrequencyCapsConfig = FrequencyCapsConfig()
    quiet_hours: QuietHoursConfig | None = None
    # for users without a valid `timezone` trait
    default_timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    decisions_kept: int = Field(20, ge=1, le=1000)

    def settings(self) -> PolicySettings:
        default_tz = ZoneInfo(self.default_timezone)
        quiet = self.quiet_hours
        return PolicySettings(
            consent=self.consent.marketing,
            consent_by_region={k.casefold(): v for k, v in self.consent.by_region.items()},
            region_trait=self.consent.region_trait,
            caps=tuple(c.cap() for c in self.frequency_caps.caps),
            when_capped=self.frequency_caps.when_capped,
            quiet=QuietHours(parse_clock(quiet.start), parse_clock(quiet.end)) if quiet else None,
            default_tz=zone(self.default_timezone, default_tz),
            decisions_kept=self.decisions_kept,
        )


class ProvidersConfig(_Section):
    outbox: OutboxSettings = OutboxSettings()
    smtp: SmtpSettings | None = None
    postmark: PostmarkSettings | None = None
    sendgrid: SendGridSettings | None = None
    mailgun: MailgunSettings | None = None


class RetryConfig(_Section):
    max_attempts: int = Field(5, ge=1, le=100)
    base: Annotated[Seconds, Field(gt=0)] = 2.0  # the first retry waits about this long
    max_delay: Annotated[Seconds, Field(gt=0)] = 600.0


class WarmupConfig(_Section):
    start: date  # day 1 of the schedule
    daily_caps: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


PROVIDERS = ("outbox", "smtp", "postmark", "sendgrid", "mailgun")


class DeliveryConfig(_Section):
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


class FeedbackConfig(_Section):
    soft_bounces: int = Field(3, ge=1, le=100)  # this many soft bounces ...
    soft_bounce_window: Annotated[Seconds, Field(gt=0)] = 7 * 86400.0  # ... within this


class WebhooksConfig(_Section):
    """Which provider webhooks this deployment accepts (POST /webhooks/{provider})."""

    sendgrid: SendGridWebhookSettings | None = None
    mailgun: MailgunWebhookSettings | None = None
    postmark: PostmarkWebhookSettings | None = None


class WebConfig(_Section):
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


class ClusterConfig(_Section):
    """How the workers of one deployment trust each other (see docs/security.md)."""

    # the NAME of the variable holding the cluster secret (32 characters or more, the
    # same on every worker): it signs internal commands and forwarded requests
    secret_env: str = Field("MAILSTREAM_CLUSTER_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # how old a forwarded request's signature may be (the workers' clocks must agree)
    request_max_age: Annotated[Seconds, Field(gt=0, le=600)] = 30.0


class RetentionConfig(_Section):
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


TenantId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class TenantQuotaConfig(_Section):
    events_per_second: float | None = Field(None, gt=0)  # per tenant, the whole deployment
    sends_per_day: int | None = Field(None, ge=1)  # UTC days; transactional is never held
    over_daily_quota: Literal["defer", "drop"] = "defer"  # what happens to marketing beyond
    rate_share: float | None = Field(None, gt=0, le=1)  # of delivery.rate_limit

    def quota(self) -> Quota:
        return Quota(
            self.events_per_second, self.sends_per_day, self.over_daily_quota, self.rate_share
        )


# The top-level sections a tenant may override, and the delivery keys among them (the
# rest of `delivery` is the deployment's: one rate limit, one retry policy, one queue).
TENANT_SECTIONS = ("workflows", "templates_dir", "policy", "delivery", "providers")
TENANT_DELIVERY_KEYS = (
    "provider",
    "from_address",
    "reply_to",
    "message_id_domain",
    "unsubscribe_mailto",
)


class TenantConfig(_Section):
    """A tenant's own settings: its quota, and the sections that replace the defaults'
    (merged key by key; checked in full by ``Config.tenant_configs``)."""

    quota: TenantQuotaConfig = TenantQuotaConfig()
    workflows: dict[str, Any] | None = None
    templates_dir: Path | None = None
    policy: dict[str, Any] | None = None
    delivery: dict[str, Any] | None = None
    providers: dict[str, Any] | None = None


class Config(_Section):
    app_id: str = Field("mailstream", pattern=r"^[A-Za-z0-9._-]+$")
    data_dir: Path = Path("data")
    log_level: str = Field("info", pattern=r"^(debug|info|warning|error)$")
    broker: BrokerConfig = BrokerConfig()
    topics: TopicsConfig = TopicsConfig()
    ingest: IngestConfig = IngestConfig()
    web: WebConfig = WebConfig()
    cluster: ClusterConfig = ClusterConfig()
    # event type -> how many of its events to keep (never identify)
    sampling: Annotated[dict[EventType, SamplingConfig], AfterValidator(_not_identify)] = {}
    # event type -> at most `limit` per user per `per`
    throttling: Annotated[dict[EventType, ThrottleConfig], AfterValidator(_not_identify)] = {}
    policy: PolicyConfig = PolicyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    providers: ProvidersConfig = ProvidersConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    # endpoint name -> where webhook steps POST to (see docs/webhook-step.md)
    webhooks_out: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], WebhookEndpoint
    ] = {}
    # Where email templates live; default: the templates shipped in the package. A
    # relative path is relative to the config file (like `include:`).
    templates_dir: Path | None = None
    # None: the shipped example journeys (mailstream/config/default_workflows.yaml).
    workflows: (
        dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], WorkflowSpec] | None
    ) = None
    # Other YAML files whose `workflows:` are added to these (paths relative to this file).
    include: list[str] = []
    # tenant id -> its quota and the sections it overrides (see docs/tenants.md)
    tenants: dict[TenantId, TenantConfig] = {}
    # how long finished deliveries and webhook calls are kept (see docs/robustness.md)
    retention: RetentionConfig = RetentionConfig()

    _tenant_configs: dict[str, Config] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _provider_configured(self) -> Config:
        name = self.delivery.provider
        if name in ("smtp", "mailgun") and getattr(self.providers, name) is None:
            raise ValueError(
                f"delivery.provider is {name}, but providers.{name} is not set"
                " (it needs at least a host or a domain; see the README)"
            )
        return self

    @model_validator(mode="after")
    def _webhook_endpoints_exist(self) -> Config:
        for workflow in self.compiled_workflows() if self.workflows is not None else ():
            for step in workflow.steps:
                if step.webhook is not None and step.webhook.endpoint not in self.webhooks_out:
                    known = ", ".join(sorted(self.webhooks_out)) or "none"
                    raise ValueError(
                        f"workflows.{workflow.name}.steps[{step.index}].webhook.endpoint: no"
                        f" endpoint {step.webhook.endpoint!r} under webhooks_out (configured:"
                        f" {known})"
                    )
        return self

    @model_validator(mode="after")
    def _retention_beyond_dedup(self) -> Config:
        window = self.ingest.dedup_window
        for key in ("deliveries", "webhook_calls"):
            kept = getattr(self.retention, key)
            if kept < window:
                raise ValueError(
                    f"retention.{key}: {kept:g}s is shorter than ingest.dedup_window"
                    f" ({window:g}s); a deleted record forgets its id, so a command with"
                    " that id arriving again would be sent again. Keep records well beyond"
                    " the events topic's retention (default 30d)"
                )
        return self

    def compiled_workflows(self) -> list[Workflow]:
        specs = self.workflows if self.workflows is not None else default_workflows()
        return [compile_workflow(name, spec) for name, spec in specs.items()]

    def tenant(self, tenant_id: str) -> Config:
        """The effective config of a tenant: its own sections over the defaults. An
        unconfigured tenant (and the default one, unless configured) gets the defaults."""
        return self._tenant_configs.get(tenant_id, self)

    def tenancy(self) -> Tenancy:
        unknown = self.ingest.unknown_tenants
        if unknown is None:
            unknown = "dead_letter" if self.tenants else "allow"
        return Tenancy(
            self.ingest.default_tenant,
            {name: t.quota.quota() for name, t in self.tenants.items()},
            allow_unknown=unknown == "allow",
        )

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.url.removeprefix("kafka://")

    @property
    def web_url(self) -> str:
        return self.web.canonical_url or f"http://{self.web.host}:{self.web.port}"


DEFAULT_WORKFLOWS = Path(__file__).with_name("default_workflows.yaml")


def default_workflows() -> dict[str, WorkflowSpec]:
    raw = yaml.safe_load(DEFAULT_WORKFLOWS.read_text(encoding="utf-8"))
    return {name: WorkflowSpec.model_validate(spec) for name, spec in raw.items()}


# Environment variables that override one key each, for containers and tests.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "MAILSTREAM_BROKER_URL": ("broker", "url"),
    "MAILSTREAM_BROKER_EMBEDDED": ("broker", "embedded"),
    "MAILSTREAM_APP_ID": ("app_id",),
    "MAILSTREAM_DATA_DIR": ("data_dir",),
    "MAILSTREAM_WEB_HOST": ("web", "host"),
    "MAILSTREAM_WEB_PORT": ("web", "port"),
    "MAILSTREAM_CANONICAL_URL": ("web", "canonical_url"),
    "MAILSTREAM_PARTITIONS": ("topics", "partitions"),
    "MAILSTREAM_TEMPLATES_DIR": ("templates_dir",),
}


def _apply_overrides(
    raw: dict[str, Any], env: os._Environ[str] | dict[str, str]
) -> dict[tuple[str, ...], str]:
    """Write the overrides into ``raw``; return which key came from which variable."""
    applied: dict[tuple[str, ...], str] = {}
    for var, path in ENV_OVERRIDES.items():
        if var not in env:
            continue
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{var}: cannot override {'.'.join(path)}: {part} is not a mapping"
                )
            node = child
        node[path[-1]] = env[var]
        applied[path] = var
    return applied


def _format_errors(
    source: str, exc: ValidationError, overridden: dict[tuple[str, ...], str]
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; the README lists every key)"
        if loc in overridden:
            msg += f" (set by ${overridden[loc]})"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def _resolve_templates_dirs(
    raw: dict[str, Any], base: Path, overridden: dict[tuple[str, ...], str]
) -> None:
    """Make each relative ``templates_dir`` in the file (the default's and the tenants')
    relative to ``base``, the config file's directory. One from ``$MAILSTREAM_TEMPLATES_DIR``
    stays relative to the working directory, as any path given in a shell does."""

    def resolve(value: Any) -> Any:
        if not isinstance(value, str | os.PathLike) or Path(value).is_absolute():
            return value
        beside = (base / value).resolve()
        # Before this release the path was taken from the working directory: a file
        # written that way keeps working while that reading is the only one that exists.
        cwd = Path(value).resolve()
        if not beside.is_dir() and cwd.is_dir() and cwd != beside:
            logger.warning(
                "templates_dir %s is not beside the config file (%s); using %s, relative to"
                " the working directory. Make the path relative to the config file.",
                value,
                beside,
                cwd,
            )
            return str(cwd)
        return str(beside)

    if "templates_dir" in raw and ("templates_dir",) not in overridden:
        raw["templates_dir"] = resolve(raw["templates_dir"])
    tenants = raw.get("tenants")
    if isinstance(tenants, dict):
        for tenant in tenants.values():
            if isinstance(tenant, dict) and "templates_dir" in tenant:
                tenant["templates_dir"] = resolve(tenant["templates_dir"])


def parse_config(
    raw: Any,
    source: str = "<config>",
    env: os._Environ[str] | dict[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate an already-parsed mapping (plus environment overrides) into a Config.

    ``base_dir``: the directory relative paths in the file are relative to (the config
    file's); None: the working directory."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: (top level): expected a mapping of keys, got {type(raw).__name__}"
        )
    raw = copy.deepcopy(raw)
    overridden = _apply_overrides(raw, os.environ if env is None else env)
    if base_dir is not None:
        _resolve_templates_dirs(raw, base_dir, overridden)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, overridden)) from None
    for name, tenant in config.tenants.items():
        config._tenant_configs[name] = _tenant_config(raw, name, tenant, source)
    return config


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    merged = dict(base)
    for key, value in over.items():
        merged[key] = deep_merge(base.get(key), value) if key in base else copy.deepcopy(value)
    return merged


def _tenant_config(raw: dict[str, Any], name: str, tenant: TenantConfig, source: str) -> Config:
    """The defaults with the tenant's sections merged on top, validated as a whole; an
    error names the key under ``tenants.<name>``."""
    where = f"tenants.{name}"
    merged = {k: v for k, v in raw.items() if k not in ("tenants", "include")}
    extra = set(tenant.delivery or {}) - set(TENANT_DELIVERY_KEYS)
    if extra:
        key = sorted(extra)[0]
        raise ConfigError(
            f"{source}: {where}.delivery.{key}: set for the whole deployment, not per tenant"
            f" (a tenant may set {', '.join(TENANT_DELIVERY_KEYS)}; its share of the rate is"
            f" {where}.quota.rate_share)"
        )
    for section in ("policy", "delivery", "providers"):
        value = getattr(tenant, section)
        if value is not None:
            merged[section] = deep_merge(raw.get(section) or {}, value)
    if tenant.templates_dir is not None:
        merged["templates_dir"] = str(tenant.templates_dir)
    if tenant.workflows is not None:
        # By name: a tenant's workflow replaces the default's of that name, null removes it.
        base = raw.get("workflows")
        if base is None:
            base = yaml.safe_load(DEFAULT_WORKFLOWS.read_text(encoding="utf-8"))
        flows = dict(base or {})
        for flow, spec in tenant.workflows.items():
            if spec is None:
                flows.pop(flow, None)
            else:
                flows[flow] = spec
        merged["workflows"] = flows
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join([where, *(str(p) for p in err["loc"])])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; docs/tenants.md lists every key)"
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: os._Environ[str] | dict[str, str] | None = None,
) -> Config:
    """Load the config from ``path``, else ``$MAILSTREAM_CONFIG``, else the defaults."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get(CONFIG_ENV) or None
    if path is None:
        return parse_config({}, "<defaults>", env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    if isinstance(raw, dict) and raw.get("include"):
        raw = _merge_includes(raw, p)
    return parse_config(raw, str(p), env, base_dir=p.parent)


def _merge_includes(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Add the ``workflows:`` of each included file; a name defined twice is an error."""
    includes = raw.get("include")
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: include: expected a list of file paths")
    merged = dict(raw.get("workflows") or {})
    for n, entry in enumerate(includes):
        where = f"{path}: include[{n}]"
        if not isinstance(entry, str):
            raise ConfigError(f"{where}: expected a file path")
        child = (path.parent / entry).resolve()
        try:
            doc = yaml.safe_load(child.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {child}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: {child} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - {"workflows"}:
            raise ConfigError(f"{where}: {child} may hold only a `workflows:` mapping")
        for name, spec in (doc.get("workflows") or {}).items():
            if name in merged:
                raise ConfigError(f"{where}: workflow {name!r} is defined twice")
            merged[name] = spec
    return {**raw, "workflows": merged}
