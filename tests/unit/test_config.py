"""Config loading: defaults, every error naming its key path, env overrides, durations."""

from __future__ import annotations

import math
from datetime import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from mailstream.config.durations import parse_duration
from mailstream.config.load import load_config, parse_config
from mailstream.config.schema import Config
from mailstream.core.events import Invalid, decode_event
from mailstream.core.windows import Cap, QuietHours, SamplingRule, ThrottleRule
from mailstream.exceptions import ConfigError, MailstreamError

SOURCE = "mailstream.yaml"


def config_error(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, SOURCE, env={} if env is None else env)
    return str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailstream.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={})

    assert config == Config()
    assert config.broker.url == "kafka://127.0.0.1:9092"
    assert config.bootstrap_servers == "127.0.0.1:9092"
    assert config.topics.partitions == 4
    assert config.ingest.dedup_window == 86400.0
    assert config.web.port == 6066
    assert config.web_url == "http://127.0.0.1:6066"
    assert config.broker.compression_type is None  # uncompressed


@pytest.mark.parametrize(
    ("compression", "codec"),
    [("lz4", "lz4"), ("zstd", "zstd"), ("gzip", "gzip"), ("none", None)],
)
def test_compression_names_the_producer_codec(compression: str, codec: str | None) -> None:
    config = Config.model_validate({"broker": {"compression": compression}})
    assert config.broker.compression_type == codec


@pytest.mark.parametrize(
    "text",
    [pytest.param("", id="empty-file"), pytest.param("# only a comment\n", id="comment-only")],
)
def test_an_empty_file_means_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text), env={}) == Config()


def test_file_values_are_read_and_durations_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "app_id: shop\n"
        "broker:\n"
        "  url: kafka://k1:9092,k2:9092\n"
        "  session_timeout: 10s\n"
        "topics:\n"
        "  partitions: 12\n"
        "ingest:\n"
        "  dedup_window: 1h30m\n"
        "  batch_within: 200ms\n"
        "web:\n"
        "  port: 8080\n"
        "  canonical_url: http://worker-1:8080\n",
    )

    config = load_config(path, env={})

    assert config.app_id == "shop"
    assert config.bootstrap_servers == "k1:9092,k2:9092"
    assert config.broker.session_timeout == 10.0
    assert config.topics.partitions == 12
    assert config.ingest.dedup_window == 5400.0
    assert config.ingest.batch_within == pytest.approx(0.2)
    assert config.web_url == "http://worker-1:8080"


def test_the_file_named_by_mailstream_config_is_used_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "web:\n  port: 7001\n")

    config = load_config(None, env={"MAILSTREAM_CONFIG": str(path)})

    assert config.web.port == 7001


def _flow(**changes: Any) -> dict[str, Any]:
    """A config with one workflow, ``w``, changed as given."""
    return {"workflows": {"w": {"trigger": {"event": "a"}, "steps": [{"send": "x"}], **changes}}}


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        pytest.param({"bogus": 1}, "bogus", "unknown key (check the spelling", id="unknown-top"),
        pytest.param(
            {"ingest": {"dedup_windw": "1h"}},
            "ingest.dedup_windw",
            "unknown key (check the spelling",
            id="unknown-nested",
        ),
        pytest.param(
            {"topics": {"partitions": 0}},
            "topics.partitions",
            "greater than or equal to 1",
            id="partitions-zero",
        ),
        pytest.param(
            {"topics": {"partitions": "many"}},
            "topics.partitions",
            "valid integer",
            id="partitions-not-a-number",
        ),
        pytest.param(
            {"ingest": {"dedup_window": "soon"}},
            "ingest.dedup_window",
            "'soon' is not a duration",
            id="dedup_window-soon",
        ),
        pytest.param(
            {"ingest": {"dedup_window": -5}},
            "ingest.dedup_window",
            "cannot be negative",
            id="dedup_window-negative",
        ),
        pytest.param(
            {"broker": {"url": "localhost:9092"}},
            "broker.url",
            "should match pattern '^kafka://",
            id="broker-url-without-scheme",
        ),
        pytest.param(
            {"broker": {"url": "kafka://host:9092/path"}},
            "broker.url",
            "should match pattern",
            id="broker-url-with-path",
        ),
        pytest.param(
            {"broker": {"compression": "brotli"}},
            "broker.compression",
            "'lz4', 'zstd', 'snappy', 'gzip' or 'none'",
            id="broker-compression-unknown",
        ),
        pytest.param(
            {"web": {"port": 70000}},
            "web.port",
            "less than or equal to 65535",
            id="web-port-too-big",
        ),
        pytest.param(
            {"log_level": "verbose"}, "log_level", "should match pattern", id="log-level-unknown"
        ),
        pytest.param(
            {"ingest": {"max_event_bytes": 100}},
            "ingest.max_event_bytes",
            "greater than or equal to 256",
            id="max-event-bytes-tiny",
        ),
        pytest.param(
            {"sampling": {"page_view": {"rate": 1.5}}},
            "sampling.page_view.rate",
            "less than or equal to 1",
            id="sampling-rate-above-one",
        ),
        pytest.param(
            {"sampling": {"page_view": {"significant_change": {"field": "a..b"}}}},
            "sampling.page_view.significant_change.field",
            "should match pattern",
            id="sampling-watch-bad-path",
        ),
        pytest.param(
            {"sampling": {"identify": {"rate": 0.5}}},
            "sampling",
            "never sampled or throttled",
            id="sampling-identify",
        ),
        pytest.param(
            {"throttling": {"search": {"limit": 0, "per": "1m"}}},
            "throttling.search.limit",
            "greater than or equal to 1",
            id="throttle-limit-zero",
        ),
        pytest.param(
            {"throttling": {"search": {"limit": 5}}},
            "throttling.search.per",
            "Field required",
            id="throttle-without-window",
        ),
        pytest.param(
            {"policy": {"consent": {"marketing": "maybe"}}},
            "policy.consent.marketing",
            "'opt_in' or 'opt_out'",
            id="consent-mode-unknown",
        ),
        pytest.param(
            {"policy": {"consent": {"by_region": {"EU": "yes"}}}},
            "policy.consent.by_region.EU",
            "'opt_in' or 'opt_out'",
            id="consent-region-mode-unknown",
        ),
        pytest.param(
            {"policy": {"frequency_caps": {"caps": [{"max": 1, "per": "fortnight"}]}}},
            "policy.frequency_caps.caps.0.per",
            "is not a duration",
            id="cap-period-unknown",
        ),
        pytest.param(
            {"policy": {"quiet_hours": {"start": "9pm", "end": "08:00"}}},
            "policy.quiet_hours.start",
            "expected a time of day like 21:00",
            id="quiet-hours-bad-time",
        ),
        pytest.param(
            {"policy": {"quiet_hours": {"start": "21:00"}}},
            "policy.quiet_hours.end",
            "Field required",
            id="quiet-hours-without-end",
        ),
        pytest.param(
            {"policy": {"default_timezone": "Mars/Olympus"}},
            "policy.default_timezone",
            "not an IANA time zone",
            id="default-timezone-unknown",
        ),
        pytest.param({"web": ["port", 80]}, "web", "valid dictionary", id="section-not-a-mapping"),
        pytest.param(
            _flow(
                steps=[{"digest": {"event": "c", "window": "1h", "template": "t", "max_item": 3}}]
            ),
            "workflows.w.steps.0.digest.digest.max_item",
            "unknown key (check the spelling",
            id="digest-unknown-key",
        ),
        pytest.param(
            _flow(
                steps=[
                    {"digest": {"event": "c", "window": "1h", "template": "t", "max_items": 101}}
                ]
            ),
            "workflows.w.steps.0.digest.digest.max_items",
            "less than or equal to 100",
            id="digest-too-many-items",
        ),
        pytest.param(
            _flow(steps=[{"digest": {"event": "c", "template": "t"}}]),
            "workflows.w.steps.0.digest.digest.window",
            "Field required",
            id="digest-without-window",
        ),
        pytest.param(
            _flow(steps=[{"digest": {"event": "c", "window": 0, "template": "t"}}]),
            "workflows.w.steps.0.digest.digest.window",
            "greater than 0",
            id="digest-empty-window",
        ),
        pytest.param(
            _flow(steps=[{"segment": {"add": "a b"}}]),
            "workflows.w.steps.0.segment.segment.add.0",
            "'a b' is not a segment name",
            id="segment-bad-name",
        ),
        pytest.param(
            _flow(trigger={"event": "a", "changed": {"status": {"fro": "x"}}}),
            "workflows.w.trigger.changed.status.fro",
            "unknown key (check the spelling",
            id="changed-unknown-key",
        ),
        pytest.param(
            _flow(trigger={"event": "a", "entity": "order_id"}),
            "workflows.w.trigger",
            "'entity' applies with 'changed' only",
            id="entity-without-changed",
        ),
        pytest.param(
            _flow(trigger={"event": "a", "where": {"in_segment": "a b"}}),
            "workflows.w.trigger.where",
            "where.in_segment: 'a b' is not a segment name",
            id="in-segment-bad-name",
        ),
    ],
)
def test_a_bad_key_reports_its_path_and_reason(raw: dict[str, Any], key: str, reason: str) -> None:
    message = config_error(raw)

    assert message.startswith(f"{SOURCE}: {key}: ")
    assert reason in message
    assert len(message.splitlines()) == 1


def test_policy_and_window_rules_become_settings() -> None:
    config = parse_config(
        {
            "sampling": {
                "page_view": {
                    "rate": 0.25,
                    "min_interval": "10s",
                    "significant_change": {"field": "cart.total", "threshold": 5},
                }
            },
            "throttling": {"search": {"limit": 20, "per": "1h"}},
            "policy": {
                "consent": {"marketing": "opt_out", "by_region": {"EU": "opt_in"}},
                "frequency_caps": {
                    "caps": [{"max": 1, "per": "day"}, {"max": 3, "per": "7d"}],
                    "when_capped": "drop",
                },
                "quiet_hours": {"start": "21:00", "end": "08:00:30"},
                "default_timezone": "Europe/Paris",
            },
        },
        SOURCE,
        env={},
    )

    assert config.sampling["page_view"].rule() == SamplingRule(
        rate=0.25, min_interval_ms=10_000, watch=("cart", "total"), threshold=5
    )
    assert config.throttling["search"].rule() == ThrottleRule(20, 3_600_000)
    settings = config.policy.settings()
    assert settings.consent == "opt_out"
    assert settings.consent_by_region == {"eu": "opt_in"}
    assert settings.caps == (Cap(1, calendar="day"), Cap(3, per_ms=7 * 86_400_000))
    assert settings.when_capped == "drop"
    assert settings.quiet == QuietHours(time(21, 0), time(8, 0, 30))
    assert str(settings.default_tz) == "Europe/Paris"


def test_every_error_is_reported_not_just_the_first() -> None:
    message = config_error(
        {
            "bogus": 1,
            "topics": {"partitions": 0},
            "ingest": {"dedup_window": "soon", "dedup_windw": 5},
            "web": {"port": 70000},
        }
    )

    lines = message.splitlines()
    assert len(lines) == 5
    for key in ("bogus", "topics.partitions", "ingest.dedup_window", "ingest.dedup_windw"):
        assert any(line.startswith(f"{SOURCE}: {key}: ") for line in lines), key
    assert any(line.startswith(f"{SOURCE}: web.port: ") for line in lines)


def test_config_errors_are_mailstream_errors_users_can_catch() -> None:
    with pytest.raises(MailstreamError):
        parse_config({"bogus": 1}, env={})


@pytest.mark.parametrize(
    ("env", "read", "want"),
    [
        pytest.param({"MAILSTREAM_WEB_PORT": "8080"}, lambda c: c.web.port, 8080, id="web-port"),
        pytest.param(
            {"MAILSTREAM_BROKER_URL": "kafka://k1:9092,k2:9092"},
            lambda c: c.bootstrap_servers,
            "k1:9092,k2:9092",
            id="broker-url",
        ),
        pytest.param(
            {"MAILSTREAM_BROKER_EMBEDDED": "false"},
            lambda c: c.broker.embedded,
            False,
            id="broker-embedded",
        ),
        pytest.param(
            {"MAILSTREAM_PARTITIONS": "16"}, lambda c: c.topics.partitions, 16, id="partitions"
        ),
        pytest.param(
            {"MAILSTREAM_DATA_DIR": "/var/lib/ms"},
            lambda c: c.data_dir,
            Path("/var/lib/ms"),
            id="data-dir",
        ),
        pytest.param(
            {"MAILSTREAM_WEB_HOST": "0.0.0.0", "MAILSTREAM_WEB_PORT": "9000"},
            lambda c: c.web_url,
            "http://0.0.0.0:9000",
            id="host-and-port",
        ),
        pytest.param(
            {"MAILSTREAM_CANONICAL_URL": "http://w1:6066"},
            lambda c: c.web_url,
            "http://w1:6066",
            id="canonical-url",
        ),
        pytest.param(
            {"UNRELATED": "1", "MAILSTREAM_UNKNOWN": "x"},
            lambda c: c,
            Config(),
            id="unrelated-vars-ignored",
        ),
    ],
)
def test_env_overrides_apply(env: dict[str, str], read: Any, want: Any) -> None:
    assert read(parse_config({}, SOURCE, env=env)) == want


def test_an_env_override_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "web:\n  port: 7000\n  host: example.org\n")

    config = load_config(path, env={"MAILSTREAM_WEB_PORT": "8080"})

    assert (config.web.host, config.web.port) == ("example.org", 8080)


@pytest.mark.parametrize(
    ("env", "key", "reason"),
    [
        pytest.param(
            {"MAILSTREAM_WEB_PORT": "eighty"}, "web.port", "valid integer", id="port-not-a-number"
        ),
        pytest.param(
            {"MAILSTREAM_WEB_PORT": "70000"}, "web.port", "less than or equal", id="port-too-big"
        ),
        pytest.param(
            {"MAILSTREAM_BROKER_URL": "localhost:9092"},
            "broker.url",
            "should match pattern",
            id="broker-url-without-scheme",
        ),
        pytest.param(
            {"MAILSTREAM_PARTITIONS": "0"},
            "topics.partitions",
            "greater than or equal to 1",
            id="partitions-zero",
        ),
    ],
)
def test_a_bad_env_override_is_reported_under_its_key(
    env: dict[str, str], key: str, reason: str
) -> None:
    message = config_error({}, env=env)

    assert message.startswith(f"{SOURCE}: {key}: ")
    assert reason in message
    assert f"(set by ${next(iter(env))})" in message


def test_parse_config_leaves_the_callers_mapping_alone() -> None:
    raw: dict[str, Any] = {"web": {"host": "0.0.0.0"}}
    parse_config(raw, SOURCE, env={"MAILSTREAM_WEB_PORT": "7000"})
    assert raw == {"web": {"host": "0.0.0.0"}}


def test_an_override_into_a_section_that_is_not_a_mapping_names_the_variable() -> None:
    message = config_error({"web": 5}, env={"MAILSTREAM_WEB_PORT": "80"})

    assert message == "MAILSTREAM_WEB_PORT: cannot override web.port: web is not a mapping"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        pytest.param(
            "app_id: demo\nweb:\n  port: 8080\n  host: x: y\n",
            "at line 4, column 10",
            "mapping values are not allowed here",
            id="colon-in-value",
        ),
        pytest.param(
            "app_id: demo\nweb:\n  port: 8080\n\thost: x\n",
            "at line 4",
            "'\\t'",
            id="tab-indent",
        ),
        pytest.param("web: {port: 1\n", "at line 2", "expected ',' or '}'", id="unclosed-flow"),
    ],
)
def test_invalid_yaml_reports_the_line(tmp_path: Path, text: str, where: str, problem: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML {where}")
    assert problem in message


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param("- broker\n- web\n", "list", id="list"),
        pytest.param("just some words\n", "str", id="scalar"),
        pytest.param("42\n", "int", id="number"),
    ],
)
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, kind: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    assert str(info.value) == f"{path}: (top level): expected a mapping of keys, got {kind}"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("missing.yaml", "No such file or directory", id="missing"),
        pytest.param(".", "Is a directory", id="directory"),
    ],
)
def test_an_unreadable_path_is_reported(tmp_path: Path, name: str, reason: str) -> None:
    path = tmp_path / name

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    assert str(info.value) == f"{path}: cannot read the config file: {reason}"


@pytest.mark.parametrize(
    "tenant", [pytest.param("acme corp", id="space"), pytest.param("a\x1fb", id="key-separator")]
)
def test_default_tenant_must_be_a_valid_tenant_id(tenant: str) -> None:
    # The same value sent explicitly as tenant_id would be refused.
    explicit = decode_event(
        orjson.dumps(
            {
                "event_id": "e",
                "event_type": "t",
                "user_id": "u",
                "timestamp": 1_700_000_000_000,
                "tenant_id": tenant,
            }
        ),
        max_bytes=4096,
        default_tenant="default",
    )
    assert explicit == Invalid(
        "bad_tenant", "tenant_id must be 1 to 64 letters, digits or _ . - when present"
    )

    message = config_error({"ingest": {"default_tenant": tenant}})

    assert message.startswith(f"{SOURCE}: ingest.default_tenant: ")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("500ms", 0.5, id="500ms"),
        pytest.param("90s", 90.0, id="90s"),
        pytest.param("15m", 900.0, id="15m"),
        pytest.param("1h30m", 5400.0, id="1h30m"),
        pytest.param("1m30ms", 60.03, id="1m30ms"),
        pytest.param("24h", 86400.0, id="24h"),
        pytest.param("30d", 2_592_000.0, id="30d"),
        pytest.param("2w", 1_209_600.0, id="2w"),
        pytest.param("1.5h", 5400.0, id="decimal-1.5h"),
        pytest.param(" 1H 30M ", 5400.0, id="spaces-and-upper-case"),
        pytest.param("0s", 0.0, id="zero-text"),
        pytest.param(0, 0.0, id="int-zero"),
        pytest.param(90, 90.0, id="int-seconds"),
        pytest.param(1.5, 1.5, id="float-seconds"),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration(value)

    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("", "'' is not a duration", id="empty"),
        pytest.param("   ", "is not a duration", id="blank"),
        pytest.param("soon", "'soon' is not a duration: use a number with ms, s", id="soon"),
        pytest.param("-1", "'-1' is not a duration", id="negative-text"),
        pytest.param("-1s", "is not a duration", id="negative-with-unit"),
        pytest.param("90", "'90' is not a duration", id="number-without-unit"),
        pytest.param("5 parsecs", "'5 parsecs' is not a duration", id="5-parsecs"),
        pytest.param("1h30", "is not a duration", id="trailing-number"),
        pytest.param("h", "is not a duration", id="unit-without-number"),
        pytest.param(".5h", "is not a duration", id="leading-dot"),
        pytest.param("1y", "is not a duration", id="unknown-unit"),
        pytest.param(True, "expected a duration such as '90s'", id="true"),
        pytest.param(False, "expected a duration", id="false"),
        pytest.param(None, "expected a duration", id="none"),
        pytest.param([1], "expected a duration", id="list"),
        pytest.param(-1, "a duration cannot be negative", id="negative-int"),
        pytest.param(-0.5, "a duration cannot be negative", id="negative-float"),
    ],
)
def test_parse_duration_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)

    assert reason in str(info.value)


def test_parse_duration_refuses_nan() -> None:
    with pytest.raises(ValueError):
        parse_duration(math.nan)


def test_the_example_file_is_valid_and_spells_out_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "mailstream.example.yaml"
    assert load_config(example, env={}) == load_config(None, env={})


@pytest.mark.parametrize(
    ("broker", "send_path", "wait"),
    [
        # tansu holds an empty fetch for its whole wait: short on the way to a send...
        ({"embedded": True}, True, 0.02),
        # ... longer elsewhere, where it only sets how often an idle consumer polls
        ({"embedded": True}, False, 0.2),
        # one configured wait for every fetch
        ({"fetch_max_wait": "50ms"}, True, 0.05),
        ({"fetch_max_wait": "50ms"}, False, 0.05),
        # Apache Kafka answers as soon as data arrives: the client's default, also for a
        # config that does not say which broker it is
        ({"embedded": False}, True, None),
        ({}, False, None),
    ],
)
def test_fetch_waits(broker: dict[str, Any], send_path: bool, wait: float | None) -> None:
    from mailstream.kafka.embedded_quirks import fetch_max_wait

    config = parse_config({"broker": broker}, SOURCE, env={})
    assert fetch_max_wait(config, send_path=send_path) == wait


def test_the_cluster_section_and_the_message_limit_default_safely() -> None:
    config = parse_config({}, env={})
    assert config.cluster.secret_env == "MAILSTREAM_CLUSTER_SECRET"
    assert config.cluster.request_max_age == 30.0
    # under the producer's 1,000,000-byte request limit, so a send command always fits
    assert 0 < config.delivery.max_message_bytes < 1_000_000


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"cluster": {"secret_env": "not a name"}}, "cluster.secret_env"),
        ({"cluster": {"request_max_age": "0s"}}, "cluster.request_max_age"),
        ({"cluster": {"secret": "inline"}}, "cluster.secret"),  # secrets live in variables
        ({"delivery": {"max_message_bytes": 2_000_000}}, "delivery.max_message_bytes"),
    ],
)
def test_a_bad_cluster_or_limit_value_fails_naming_the_key(raw: dict[str, Any], key: str) -> None:
    assert key in config_error(raw)


def test_exactly_once_on_the_embedded_broker_is_refused_naming_the_setting() -> None:
    message = config_error({"processing_guarantee": "exactly_once", "broker": {"embedded": True}})

    assert "processing_guarantee: exactly_once needs Kafka transactions" in message
    assert parse_config({"processing_guarantee": "exactly_once"}).exactly_once
    assert not parse_config({}).exactly_once
