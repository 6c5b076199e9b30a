"""The Kafka sections of the config: where the brokers are and how to connect to them
(``broker``, ``broker.security``), the consumer group's timeouts, and the topics with
their partitions, replication and retention."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mailstream.config.sections import Seconds, Section

# one or more host:port, comma-separated, after kafka://
BROKER_URL_PATTERN = r"^kafka://[^\s/]+(,[^\s/]+)*$"

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _existing_file(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"no such file: {value}")
    if value is not None and info.data.get("protocol") not in TLS_PROTOCOLS:
        raise ValueError("only used with protocol SSL or SASL_SSL")
    return value


class SecurityConfig(Section):
    """How every Kafka client of mailstream (Faust's included) connects to the brokers
    (mailstream.kafka.access builds the clients' arguments). The password is never here:
    only the NAME of the environment variable that holds it."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # required with SASL_PLAINTEXT and SASL_SSL
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, validate_default=True
    )
    username: str | None = Field(None, min_length=1, validate_default=True)
    # the NAME of the variable holding the SASL password
    password_env: EnvName | None = Field(None, validate_default=True)
    # PEM files for TLS (SSL, SASL_SSL): the CAs to trust (default: the system's), and a
    # client certificate and its key for brokers that ask for one
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # the NAME of the variable holding the password of an encrypted key_file
    key_password_env: EnvName | None = None
    # false: the broker's certificate must still be signed by a trusted CA, but may name
    # another host (never on a network you do not control)
    check_hostname: bool = True

    @field_validator("sasl_mechanism", "username", "password_env")
    @classmethod
    def _sasl_settings(cls, value: str | None, info: ValidationInfo) -> str | None:
        sasl = info.data.get("protocol") in SASL_PROTOCOLS
        if sasl and value is None:
            raise ValueError(
                f"required when protocol is {info.data['protocol']}"
                + (
                    " (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                    if info.field_name == "sasl_mechanism"
                    else ""
                )
            )
        if not sasl and value is not None and "protocol" in info.data:
            raise ValueError("only used with protocol SASL_PLAINTEXT or SASL_SSL")
        return value

    _files = field_validator("ca_file", "cert_file", "key_file")(_existing_file)

    @field_validator("key_password_env")
    @classmethod
    def _key_password_needs_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("key_file") is None:
            raise ValueError("set only with key_file")
        return value

    @field_validator("key_file")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("cert_file") is None:
            raise ValueError("set only with cert_file (the client certificate)")
        return value


# Apache Kafka's default group.min.session.timeout.ms: a JoinGroup asking for less is
# refused (INVALID_SESSION_TIMEOUT), so a worker could never join.
KAFKA_MIN_SESSION_TIMEOUT = 6.0

# Group timeouts when the config leaves them out: (embedded broker, Apache Kafka).
# - session timeout: how long a worker that stopped heartbeating (crashed, cut off) keeps
#   its partitions. On Kafka 10 s: inside the 6 s .. 30 min Kafka accepts by default
#   (group.min/max.session.timeout.ms), with room for a few lost heartbeats and a GC
#   pause, and a takeover after a crash within seconds. tansu holds a joining member for
#   half the session timeout, so every start there waits about 3 s with 6 s.
# - heartbeat: a third of the session timeout or less, as Kafka advises.
# - rebalance timeout: how long the group waits for every member to rejoin. A member
#   rejoins once its revoke has run, which commits and flushes its staged table writes
#   (mailstream.state.staged_flush): on a busy worker several seconds, more while a
#   broker fails over. 60 s (Faust's default) lets a slow flush finish instead of the
#   member being dropped and the group rebalancing again; on tansu 3 s keeps rebalances
#   short (it waits that long for a member that left without saying so).
# - max poll interval: how long the consumer may go without polling before it leaves
#   the group. Faust's consumer thread polls on its own, but pauses in a rebalance
#   callback count; 300 s is Kafka's own max.poll.interval.ms default.
GROUP_TIMEOUT_DEFAULTS: dict[str, tuple[float, float]] = {
    "session_timeout": (6.0, 10.0),
    "heartbeat_interval": (1.0, 3.0),
    "rebalance_timeout": (3.0, 60.0),
    "max_poll_interval": (300.0, 300.0),
}


class BrokerConfig(Section):
    url: str = Field("kafka://127.0.0.1:9092", pattern=BROKER_URL_PATTERN)
    # true: the broker is mailstream's embedded one (tansu), and its workarounds are on
    # (mailstream.kafka.embedded_quirks): tansu answers ListOffsets(latest) wrongly for
    # multi-record batches, which makes Faust's table recovery miss the tail of a
    # changelog, and it lacks idempotent producing. `mailstream demo` sets it for the
    # worker it starts; anywhere else it is false unless the config says true, so a
    # config that leaves it out runs as Apache Kafka needs.
    embedded: bool = False
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
    # The consumer group's timeouts; left out, GROUP_TIMEOUT_DEFAULTS above (they differ
    # between the embedded broker and Kafka, and say why).
    rebalance_timeout: Annotated[Seconds, Field(gt=0, le=3600)] = 0.0
    session_timeout: Annotated[Seconds, Field(gt=0, le=1800)] = 0.0
    heartbeat_interval: Annotated[Seconds, Field(gt=0, le=600)] = 0.0
    max_poll_interval: Annotated[Seconds, Field(ge=1, le=86400)] = 0.0
    # A worker that has not reached the broker for this long exits non-zero, saying so
    # (``/health`` reports it not ready within seconds; see docs/robustness.md).
    lost_after: Annotated[Seconds, Field(ge=5, le=86400)] = 60.0
    # TLS and SASL (see docs/kafka.md)
    security: SecurityConfig = SecurityConfig()

    @model_validator(mode="before")
    @classmethod
    def _group_timeout_defaults(cls, raw: Any) -> Any:
        """Fill in the group timeouts left out, for the broker the config names."""
        if not isinstance(raw, dict):
            return raw
        embedded = _truthy(raw.get("embedded", False))
        filled = dict(raw)
        for key, (on_embedded, on_kafka) in GROUP_TIMEOUT_DEFAULTS.items():
            if filled.get(key) is None:
                filled[key] = on_embedded if embedded else on_kafka
        return filled

    @model_validator(mode="after")
    def _timeouts_kafka_accepts(self) -> BrokerConfig:
        if not self.embedded and self.session_timeout < KAFKA_MIN_SESSION_TIMEOUT:
            raise ValueError(
                f"broker.session_timeout: {self.session_timeout:g}s is below"
                f" {KAFKA_MIN_SESSION_TIMEOUT:g}s, the least Apache Kafka accepts by default"
                " (group.min.session.timeout.ms): the broker would refuse the worker's"
                " JoinGroup. Use 6s or more (default 10s), or broker.embedded: true for the"
                " embedded broker"
            )
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError(
                f"broker.heartbeat_interval: {self.heartbeat_interval:g}s must be shorter"
                f" than broker.session_timeout ({self.session_timeout:g}s), a third of it"
                " or less"
            )
        return self

    @property
    def compression_type(self) -> str | None:
        """The codec for the producer's ``compression_type`` (None: uncompressed)."""
        return None if self.compression == "none" else self.compression

    @field_validator("url", mode="before")
    @classmethod
    def _no_url_options(cls, value: object) -> object:
        if isinstance(value, str) and "?" in value:
            raise ValueError(
                f"{value!r}: options in the URL are not read; set the security settings under"
                " broker.security (protocol, sasl_mechanism, username, password_env, ca_file;"
                " see docs/kafka.md) and keep only kafka://host:port[,host:port...] here"
            )
        return value


def _truthy(value: Any) -> bool:
    """``broker.embedded`` as pydantic will read it (a bool, or its text from the
    environment), for the defaults that depend on it; a value it would refuse is
    refused there."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "t", "y")
    return value is True or value == 1


DAY = 86400.0


class TopicRetention(Section):
    """How long each topic keeps its records (the topic's ``retention.ms``), set when
    mailstream creates the topic. The suppression list is compacted instead: it keeps
    the latest record of every address for good."""

    # the README's promise: an event can be replayed for 30 days
    events: Annotated[Seconds, Field(ge=3600)] = 30 * DAY
    # send commands (transactional and marketing): read within seconds; a week covers a
    # deployment stopped over a long weekend
    sends: Annotated[Seconds, Field(ge=3600)] = 7 * DAY
    # provider feedback (bounces, complaints), the evidence behind suppressions
    feedback: Annotated[Seconds, Field(ge=3600)] = 30 * DAY
    # dead letters wait for a person to look at them: longer than anything else
    dlq: Annotated[Seconds, Field(ge=3600)] = 90 * DAY
    # webhook step commands, and verified provider webhooks on their way to the replay guard
    webhooks: Annotated[Seconds, Field(ge=3600)] = 7 * DAY
    feedback_claims: Annotated[Seconds, Field(ge=3600)] = 7 * DAY
    # a logged-out session matters until it would have expired (12 hours)
    sessions: Annotated[Seconds, Field(ge=DAY)] = 2 * DAY


class TopicsConfig(Section):
    # Partitions of every topic (and table) mailstream creates: the most workers that
    # can share the work. Partitions cannot be reduced, and adding some moves users to
    # other partitions: size for the workers you may ever run.
    partitions: int = Field(4, ge=1, le=1024)
    # Replicas of each topic mailstream (and Faust, for the tables' changelogs) creates;
    # unset: the broker's default.replication.factor (1 on the embedded broker).
    replication: int | None = Field(None, ge=1, le=16)
    # The topics' min.insync.replicas; unset: the broker's. With acks=all, a write
    # succeeds once this many replicas have it.
    min_insync_replicas: int | None = Field(None, ge=1, le=16)
    retention: TopicRetention = TopicRetention()
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
