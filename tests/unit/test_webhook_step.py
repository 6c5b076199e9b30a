"""The webhook step's pure parts: the signature, the backoff, the body in the sandbox,
the step in a workflow, the command, answers and the call record."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from mailstream.config.webhooks_out_settings import WebhookEndpoint, build_endpoints
from mailstream.core.cluster_trust import ClusterKey
from mailstream.core.events import Event
from mailstream.core.user_state import UserState, apply_event
from mailstream.delivery.pacing import retry_delay
from mailstream.delivery.state_machine import (
    ATTEMPTING,
    FAILED,
    QUEUED,
    SENT,
    QueueKey,
    attempt,
    failed,
)
from mailstream.delivery.state_machine import orphaned as orphaned_call
from mailstream.exceptions import ConfigError
from mailstream.providers.base import SendFailure
from mailstream.webhooks_out.call_command import (
    decode_command,
    pick,
    verified_command,
    webhook_command,
)
from mailstream.webhooks_out.call_state import (
    accept_call,
    answer_failure,
    breaker_failure,
    expire,
    expired,
    hold,
)
from mailstream.webhooks_out.json_body import MAX_BODY_BYTES, Body, BodyError
from mailstream.webhooks_out.signature import (
    ID_HEADER,
    SIGNATURE_HEADER,
    request_headers,
    signature_header,
    verify,
)
from mailstream.workflows.engine import MAX_STEPS_PER_RUN, Engine, send_id
from mailstream.workflows.spec import WorkflowSpec, compile_workflow

SECRET = b"whsec-test-secret-0123456789"
T = 1_700_000_000

# ---- the signature ------------------------------------------------------------------------

CLUSTER = ClusterKey("unit-test-cluster-secret-0123456789abcdef")


def test_the_signature_header_has_the_documented_format() -> None:
    # computed apart: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac <secret>
    expected = "b741c9db186a1a22e0f82fbf0bc55a66d1ca8c25ef6e9f67dfeb0107bdf42aea"
    assert signature_header(SECRET, T, b'{"a":1}') == f"t={T},v1={expected}"


def test_request_headers_name_the_call_and_sign_exactly_the_body() -> None:
    body = orjson.dumps({"email": "ada@example.com", "n": 1})
    headers = request_headers(SECRET, "wh-1", 2, T, body)
    assert headers[ID_HEADER] == "wh-1"
    assert headers["X-Mailstream-Attempt"] == "2"
    assert headers["Content-Type"] == "application/json"
    mac = hmac.new(SECRET, f"{T}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"t={T},v1={mac}"


GOOD = signature_header(SECRET, T, b"{}")


@pytest.mark.parametrize(
    "header,body,now,ok",
    [
        (GOOD, b"{}", T, True),
        (GOOD, b"{}", T + 299, True),
        (GOOD, b"{}", T + 301, False),  # too old: a replay
        (GOOD, b"{}", T - 301, False),  # too far ahead
        (GOOD, b"{ }", T, False),  # the body changed
        (signature_header(b"another-secret-0123456", T, b"{}"), b"{}", T, False),
        (GOOD.replace(f"t={T}", f"t={T + 1}"), b"{}", T, False),  # the time changed
        (f"v1=junk,{GOOD}", b"{}", T, True),  # any v1 may match (secret rotation)
        (f"t={T}", b"{}", T, False),
        ("", b"{}", T, False),
        (None, b"{}", T, False),
        ("t=abc,v1=00", b"{}", T, False),
    ],
)
def test_verify(header: str | None, body: bytes, now: float, ok: bool) -> None:
    assert verify(SECRET, header, body, now) is ok


# ---- the backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempts,jitter,retry_after,delay",
    [
        (1, 0.0, None, 0.5),  # base 1s: half fixed, half jittered
        (1, 1.0, None, 1.0),
        (2, 0.0, None, 1.0),
        (3, 0.5, None, 3.0),
        (4, 1.0, None, 8.0),
        (7, 1.0, None, 30.0),  # capped at max_delay
        (9, 0.0, None, 15.0),
        (1, 0.0, 20.0, 20.0),  # Retry-After is a floor
        (4, 1.0, 2.0, 8.0),
    ],
)
def test_the_backoff_schedule(
    attempts: int, jitter: float, retry_after: float | None, delay: float
) -> None:
    assert retry_delay(attempts, 1.0, 30.0, jitter, retry_after) == pytest.approx(delay)


def endpoint(**kw: Any) -> Any:
    settings = {"url": "http://127.0.0.1:1/hook", "secret_env": "HOOK_SECRET", **kw}
    return build_endpoints({"crm": WebhookEndpoint.model_validate(settings)}, ENV)["crm"]


ENV = {"HOOK_SECRET": SECRET.decode()}
COMMAND = {
    "webhook_id": "wh-1",
    "tenant_id": "acme",
    "user_id": "u1",
    "endpoint": "crm",
    "workflow": "w",
    "enrollment_id": "e1",
    "step": 0,
    "body": {"a": 1},
    "store": None,
    "created_at": T * 1000,
}


def test_retries_back_off_then_give_up_after_the_configured_number() -> None:
    ep = endpoint(retries=3, backoff={"base": "100ms", "max_delay": "1s"})
    call = accept_call(None, COMMAND, 0)
    assert call is not None and call.state == QUEUED
    readies = []
    now = 0
    for n in range(4):
        attempt(call, now)
        assert call.state == ATTEMPTING and call.attempts == n + 1
        outcome = failed(call, SendFailure("http_503", "down", retryable=True), ep.retry, now, 1.0)
        if n < 3:
            assert outcome.reason == "retry" and call.state == QUEUED
            assert call.queue_key is not None
            readies.append(QueueKey.decode(call.queue_key).ready - now)
            assert outcome.retry_at is not None
            now = outcome.retry_at
        else:
            assert outcome.reason == "exhausted" and call.state == FAILED
    assert readies == [100, 200, 400]
    assert len(call.history) == 4


def test_a_4xx_is_permanent_and_not_retried() -> None:
    call = accept_call(None, COMMAND, 0)
    assert call is not None
    attempt(call, 0)
    failure = answer_failure(404, {}, b"no such hook", datetime.fromtimestamp(T, UTC))
    assert failure is not None
    outcome = failed(call, failure, endpoint().retry, 0, 0.5)
    assert outcome.reason == "permanent" and outcome.retry_at is None and call.state == FAILED
    assert call.history[-1][1] == "http_404"


@pytest.mark.parametrize(
    "status,headers,retryable,breaker",
    [
        (200, {}, None, False),
        (204, {}, None, False),
        (400, {}, False, False),  # the endpoint is up and refuses: permanent
        (401, {}, False, False),
        (404, {}, False, False),
        (410, {}, False, False),
        (301, {"Location": "x"}, False, False),
        (408, {}, True, True),
        (429, {"Retry-After": "7"}, True, True),
        (500, {}, True, True),
        (502, {}, True, True),
        (503, {}, True, True),
    ],
)
def test_answers(
    status: int, headers: dict[str, str], retryable: bool | None, breaker: bool
) -> None:
    failure = answer_failure(status, headers, b"", datetime.fromtimestamp(T, UTC))
    if retryable is None:
        assert failure is None
    else:
        assert failure is not None and failure.retryable is retryable
        assert failure.code == f"http_{status}"
        if "Retry-After" in headers:
            assert failure.retry_after == 7.0
    assert breaker_failure(failure) is breaker


def test_timeouts_and_refused_connections_count_against_the_breaker() -> None:
    for code in ("timeout", "connection"):
        assert breaker_failure(SendFailure(code, "x", retryable=True))


def test_a_replayed_command_is_not_queued_twice() -> None:
    call = accept_call(None, COMMAND, 5)
    assert call is not None
    assert accept_call(call, COMMAND, 6) is None


def test_held_calls_move_without_using_an_attempt_and_expire() -> None:
    call = accept_call(None, COMMAND, T * 1000)
    assert call is not None
    hold(call, T * 1000 + 30_000)
    assert call.queue_key is not None
    assert QueueKey.decode(call.queue_key).ready == T * 1000 + 30_000
    assert call.attempts == 0 and call.state == QUEUED
    assert not expired(COMMAND, 60_000, T * 1000 + 59_999)
    assert expired(COMMAND, 60_000, T * 1000 + 60_000)
    expire(call, T * 1000 + 60_000, 60_000)
    assert call.state == FAILED and call.queue_key is None and call.history[-1][1] == "expired"


def test_a_call_cut_off_by_a_crash_is_made_again() -> None:
    call = accept_call(None, COMMAND, 0)
    assert call is not None
    attempt(call, 0)
    assert orphaned_call(call, 10, resend=True) is True
    assert call.state == QUEUED and call.queue_key is not None
    call.state = SENT  # sanity: the record format is the deliveries'
    assert orjson.loads(call.encode())["s"] == SENT


# ---- the body in the sandbox -----------------------------------------------------------------

SPEC = {
    "email": "{{ user.email }}",
    "greeting": "Hello {{ user.first_name }}!",
    "total": "{{ event.total }}",
    "items": "{{ context['items'] }}",
    "source": "mailstream",
    "n": 3,
    "nested": {"list": ["{{ user.user_id }}", 1, None, True]},
}

HOSTILE = [
    '","admin":true,"x":"',  # JSON injection
    "{{ 7 * 7 }}",  # template injection: a value is never evaluated
    "{% for x in range(10**9) %}{% endfor %}",
    "<script>alert(1)</script>",
    "line\nbreak\r\n\u2028\x00",
    "\\u0022",
    "🙂" * 10,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_data(value: str) -> None:
    body = Body(SPEC)
    out = body.render(
        {"email": value, "first_name": value, "user_id": value},
        {"total": value},
        {"items": [value, {"k": value}]},
    )
    assert out["email"] == value
    assert out["greeting"] == f"Hello {value}!"
    assert out["total"] == value
    assert out["items"] == [value, {"k": value}]
    assert out["nested"] == {"list": [value, 1, None, True]}
    assert set(orjson.loads(orjson.dumps(out))) == set(SPEC)


def test_a_whole_expression_keeps_its_json_type() -> None:
    out = Body(SPEC).render(
        {"email": "a@x.test", "first_name": "Ada", "user_id": "u1"},
        {"total": 42.5},
        {"items": [{"name": "mug", "qty": 2}]},
    )
    assert out == {
        "email": "a@x.test",
        "greeting": "Hello Ada!",
        "total": 42.5,
        "items": [{"name": "mug", "qty": 2}],
        "source": "mailstream",
        "n": 3,
        "nested": {"list": ["u1", 1, None, True]},
    }


@pytest.mark.parametrize(
    "spec,user,reason",
    [
        ({"a": "{{ user.missing }}"}, {}, "missing"),
        ({"a": "x {{ user.missing }}"}, {}, "missing"),
        ({"a": "{{ user.__class__ }}"}, {"x": 1}, ""),
        ({"a": "{{ ''.__class__.__mro__ }}"}, {}, "unsafe"),
        ({"a": "{{ 'a' * 10**9 }}"}, {}, "unsafe"),
        ({"a": "{{ 2 ** 100000 }}"}, {}, "unsafe"),
        ({"a": "{{ user.big }}"}, {"big": "x" * (MAX_BODY_BYTES + 1)}, "limit"),
        ({"a": "{{ user.f }}"}, {"f": float("nan")}, "JSON number"),
        ({"a": "{{ user.s }}"}, {"s": "\ud800"}, "encoded"),
        ({"a": "{{ range(3) }}"}, {}, "not a JSON value"),
        ({"a": "{{ user.items }}"}, {}, ""),  # a dict method is not data
    ],
)
def test_bodies_that_cannot_render_say_where_and_why(
    spec: dict[str, Any], user: dict[str, Any], reason: str
) -> None:
    with pytest.raises(BodyError) as info:
        Body(spec).render(user, {}, {})
    assert info.value.path.startswith("body")
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "spec,where",
    [
        ({"a": "{{ user.email "}, "body.a"),
        ({"a": {"b": ["ok", "{% if %}"]}}, "body.a.b[1]"),
        ({"a": "{{ x }} {{"}, "body.a"),
    ],
)
def test_a_syntax_error_names_the_key(spec: dict[str, Any], where: str) -> None:
    with pytest.raises(BodyError) as info:
        Body(spec)
    assert info.value.path == where


# ---- the step in a workflow, the engine and the config ----------------------------------------

WORKFLOW = {
    "trigger": {"event": "signup"},
    "steps": [
        {
            "webhook": {
                "endpoint": "crm",
                "body": {"email": "{{ user.email }}", "plan": "{{ event.plan }}"},
                "store": {"from": "data.id", "as": "crm_id"},
            }
        },
        {"wait": "1h"},
        {"webhook": {"endpoint": "crm"}},
    ],
}


def user_after(ev: Event, engine: Engine, user: UserState) -> Any:
    apply_event(user, ev)
    return engine.on_event(user, ev, ev.timestamp)


def signup(event_id: str = "ev-1") -> Event:
    return Event(
        event_id=event_id,
        event_type="signup",
        user_id="u1",
        timestamp=T * 1000,
        tenant_id="acme",
        payload={"plan": "pro"},
    )


def test_the_engine_emits_a_webhook_with_a_deterministic_id() -> None:
    engine = Engine([compile_workflow("onboard", WorkflowSpec.model_validate(WORKFLOW))])
    user = UserState("acme", "u1", traits={"email": "ada@example.com"})
    fx = user_after(signup(), engine, user)
    [hook] = fx.webhooks
    assert hook.webhook_id == send_id(user, "onboard", "ev-1", 1)
    assert hook.action.endpoint == "crm" and hook.action.store_as == "crm_id"
    assert hook.event == {"plan": "pro"} and hook.step == 0
    # a replay of the same event on the state before it computes the same id
    again = user_after(signup(), engine, UserState("acme", "u1"))
    assert again.webhooks[0].webhook_id == hook.webhook_id
    # the second webhook, after the wait, is another execution: another id
    [timer] = fx.timers_add
    later = engine.on_timer(user, timer.kind, timer.workflow, timer.due, timer.due)
    [second] = later.webhooks
    assert second.webhook_id == send_id(user, "onboard", "ev-1", 3) != hook.webhook_id


def test_a_loop_without_a_wait_calls_nothing() -> None:
    loop = {
        "trigger": {"event": "signup"},
        "steps": [
            {"id": "top", "webhook": {"endpoint": "crm"}},
            {"branch": {"if": None, "then": "top"}},
        ],
    }
    engine = Engine([compile_workflow("loop", WorkflowSpec.model_validate(loop))])
    fx = user_after(signup(), engine, UserState("acme", "u1"))
    assert fx.webhooks == [] and MAX_STEPS_PER_RUN > 1
    assert ("loop", "step_limit") in fx.counts


def test_the_command_carries_the_rendered_body_and_what_to_store() -> None:
    engine = Engine([compile_workflow("onboard", WorkflowSpec.model_validate(WORKFLOW))])
    user = UserState("acme", "u1", traits={"email": "ada@example.com"})
    [hook] = user_after(signup(), engine, user).webhooks
    body = hook.action.body.render({"email": "ada@example.com"}, hook.event, hook.context)
    command = webhook_command(user, hook, body, 123)
    assert decode_command(orjson.dumps(command)) == command
    assert command["body"] == {"email": "ada@example.com", "plan": "pro"}
    assert command["store"] == {"from": "data.id", "as": "crm_id"}
    assert command["endpoint"] == "crm" and command["enrollment_id"] == "ev-1"


@pytest.mark.parametrize(
    "value,reason",
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (orjson.dumps({**COMMAND, "webhook_id": ""}), "webhook_id"),
        (orjson.dumps({k: v for k, v in COMMAND.items() if k != "endpoint"}), "endpoint"),
        (orjson.dumps({**COMMAND, "body": "x"}), "body"),
        (orjson.dumps({**COMMAND, "created_at": "now"}), "created_at"),
        (orjson.dumps({**COMMAND, "store": {"from": "x"}}), "store"),
        (None, "not JSON"),
        # one byte over the limit of a body mailstream would render: never POSTed
        (
            orjson.dumps({**COMMAND, "body": {"x": "a" * (MAX_BODY_BYTES - 7)}}),
            f"over the {MAX_BODY_BYTES}-byte limit",
        ),
    ],
)
def test_malformed_commands_say_why(value: bytes | None, reason: str) -> None:
    problem = decode_command(value)
    assert isinstance(problem, str) and reason in problem


@pytest.mark.parametrize(
    "answer,path,found",
    [
        ({"id": "c1"}, "id", (True, "c1")),
        ({"data": {"id": 7}}, "data.id", (True, 7)),
        ({"data": [{"id": "x"}]}, "data.0.id", (True, "x")),
        ({"data": {"id": None}}, "data.id", (True, None)),
        ({"data": {}}, "data.id", (False, None)),
        ({"data": "s"}, "data.id", (False, None)),
        ({"data": [1]}, "data.3", (False, None)),
    ],
)
def test_picking_the_field_to_store(answer: Any, path: str, found: tuple[bool, Any]) -> None:
    assert pick(answer, path) == found


def test_a_webhook_step_must_name_a_configured_endpoint() -> None:
    from mailstream.config.load import parse_config

    raw: dict[str, Any] = {"workflows": {"onboard": WORKFLOW}}
    with pytest.raises(ConfigError, match=r"steps\[0\]\.webhook\.endpoint: no endpoint 'crm'"):
        parse_config(raw, env={})
    raw["webhooks_out"] = {"crm": {"url": "https://crm.example/hook", "secret_env": "CRM"}}
    config = parse_config(raw, env={})
    assert config.webhooks_out["crm"].retries == 5


@pytest.mark.parametrize(
    "settings,problem",
    [
        ({"url": "ftp://x", "secret_env": "S"}, "webhooks_out.crm.url"),
        ({"url": "https://x", "secret_env": "S", "timeout": "0s"}, "webhooks_out.crm.timeout"),
        ({"url": "https://x", "secret_env": "S", "retries": -1}, "webhooks_out.crm.retries"),
        ({"url": "https://x", "secret_env": "S", "breaker": {"failures": 0}}, "failures"),
        ({"url": "https://x", "secret_env": "S", "surprise": 1}, "unknown key"),
        ({"url": "https://x"}, "webhooks_out.crm.secret_env"),
    ],
)
def test_bad_endpoint_config_names_the_key(settings: dict[str, Any], problem: str) -> None:
    from mailstream.config.load import parse_config

    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        parse_config({"webhooks_out": {"crm": settings}}, env={})


@pytest.mark.parametrize("env", [{}, {"HOOK_SECRET": "short"}])
def test_a_missing_or_short_secret_stops_the_worker_and_is_not_shown(env: dict[str, str]) -> None:
    config = WebhookEndpoint.model_validate({"url": "https://x", "secret_env": "HOOK_SECRET"})
    with pytest.raises(ConfigError, match="HOOK_SECRET") as info:
        build_endpoints({"crm": config}, env)
    assert "short" not in str(info.value).replace("too short", "")


def test_an_endpoint_never_shows_its_secret() -> None:
    ep = endpoint()
    assert SECRET.decode() not in repr(ep) and SECRET.decode() not in str(ep)


# ---- the applier: a command on the webhooks topic, or a dead letter -------------------------


def applier_run(body: dict[str, Any], traits: dict[str, Any]) -> Any:
    from typing import cast

    from mailstream.state.rocksdb_store import PartitionStore
    from mailstream.state.staged_flush import Outbox
    from mailstream.workflows.apply_effects import EffectsApplier
    from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates

    spec = {
        "trigger": {"event": "signup"},
        "steps": [{"webhook": {"endpoint": "crm", "body": body}}],
    }
    engine = Engine([compile_workflow("w", WorkflowSpec.model_validate(spec))])
    user = UserState("acme", "u1", traits=traits)
    fx = user_after(signup(), engine, user)
    applier = EffectsApplier(
        Templates(DEFAULT_TEMPLATE_DIR),
        cast(PartitionStore, None),  # no timers in these effects
        {"transactional": "sends.t", "marketing": "sends.m"},
        "dlq",
        "hooks",
        cluster=CLUSTER,
        max_message_bytes=900_000,
    )
    outbox = Outbox()
    applier.apply(outbox, 0, b"acme\x1fu1", user, fx, 99)
    return outbox.messages


def test_the_applier_emits_the_command_keyed_by_user_and_signed() -> None:
    [(topic, key, value, headers, _partition)] = applier_run(
        {"e": "{{ user.email }}"}, {"email": "a@x.test"}
    )
    assert (topic, key, headers) == ("hooks", b"u1", None)
    signed = verified_command(CLUSTER, key, value)
    assert isinstance(signed, bytes), signed
    command = orjson.loads(signed)
    assert command["body"] == {"e": "a@x.test"} and command["created_at"] == 99


def test_a_body_that_does_not_render_is_dead_lettered_with_its_key() -> None:
    [(topic, key, value, headers, _partition)] = applier_run({"e": "{{ user.email }}"}, {})
    assert (topic, key) == ("dlq", b"u1")
    found = dict(headers or [])
    assert found["mailstream.reason_code"] == b"webhook_body_error"
    assert b"workflows.w.steps[0].webhook.body.e" in found["mailstream.reason"]
    assert orjson.loads(value)["error"]["path"] == "body.e"
