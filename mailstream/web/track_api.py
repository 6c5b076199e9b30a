"""``POST /v1/track``, ``/v1/identify`` and ``/v1/batch``: Segment-shaped events over
HTTP (``http_ingest``), for an app that has no Kafka producer.

A request is authenticated by a write key (HTTP Basic with the key as the user name, as
Segment's libraries send it, or ``Bearer``); the key decides the events' tenant. Every
call is checked by the rules of events read from Kafka (mailstream.core.segment_calls),
a bad one answered 400 naming its field and nothing of the request produced. The
events go to the events topic, each to its user's partition, and the answer is 200 only
once the broker has them all (the worker's producer: acks=all, idempotent). Each key
may send ``events_per_second`` (429 with ``Retry-After`` beyond), in bodies of at most
``max_body_bytes`` (413).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson
from faust.web import Request, Response, View

from mailstream.config.schema import Config
from mailstream.core.events import Event
from mailstream.core.segment_calls import BadCall, batch_calls, to_event
from mailstream.delivery.pacing import TokenBucket
from mailstream.exceptions import ConfigError
from mailstream.kafka.partitioning import keyed_partition
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.web.admin_auth import bearer_value
from mailstream.web.request_body import read_body

logger = logging.getLogger(__name__)

MIN_KEY = 16
# the result label of each refusal
RESULTS = {
    400: "invalid",
    401: "unauthorized",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


def write_keys(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Write key -> tenant; a key that is missing, short or shared fails, naming it."""
    keys: dict[str, str] = {}
    for tenant, var in config.http_ingest.write_keys_env.items():
        key = env.get(var, "")
        name = f"http_ingest.write_keys_env.{tenant}"
        if len(key) < MIN_KEY:
            raise ConfigError(f"{name}: set ${var} to a write key of {MIN_KEY} or more characters")
        if key in keys:
            raise ConfigError(f"{name}: ${var} holds the write key of tenant {keys[key]!r} too")
        keys[key] = tenant
    return keys


def presented_key(header: str | None) -> str | None:
    """The write key of an ``Authorization`` header: Basic (the key as the user name,
    any password) or Bearer."""
    if not header:
        return None
    bearer = bearer_value(header)
    if bearer is not None:
        return bearer
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def tenant_of(header: str | None, keys: Mapping[str, str]) -> str | None:
    """The tenant whose write key ``header`` carries; None for none (compared in
    constant time with each key)."""
    given = presented_key(header)
    if given is None:
        return None
    found = None
    for key, tenant in keys.items():
        if hmac.compare_digest(given.encode(), key.encode()):
            found = tenant
    return found


def events_of(
    doc: Any, kind: str | None, tenant: str, now_ms: int, config: Config
) -> list[tuple[bytes, Event]]:
    """The events of a request's body (one call, or a ``batch`` when ``kind`` is None);
    raises BadCall for the first call that is not taken, naming it in a batch."""
    calls = [doc] if kind is not None else batch_calls(doc)
    limits = config.ingest.limits.limits()
    events = []
    for i, call in enumerate(calls):
        try:
            events.append(
                to_event(call, kind, tenant, now_ms, config.ingest.max_event_bytes, limits)
            )
        except BadCall as exc:
            if kind is not None:
                raise
            raise BadCall(exc.code, f"batch[{i}].{exc.detail}") from None
    return events


async def produce(app: Any, topic: str, events: list[tuple[bytes, Event]]) -> None:
    """Each event to its user's partition; returns once the broker has them all."""
    pending = []
    for raw, event in events:
        key = event.user_id.encode()
        partition = await keyed_partition(app.producer, topic, key)
        pending.append(await app.producer.send(topic, key, raw, partition, None, None))
    for sent in pending:
        await sent


def register(rt: Runtime) -> None:
    """The three endpoints, when ``http_ingest.enabled``; a bad write key fails here."""
    settings = rt.config.http_ingest
    if not settings.enabled:
        return
    app, config = rt.app, rt.config
    keys = write_keys(config, rt.env)
    topic = config.topics.events
    buckets = {
        tenant: TokenBucket(settings.events_per_second, settings.burst) for tenant in keys.values()
    }

    def problem(
        web: View,
        status: int,
        code: str,
        detail: str,
        count: int = 1,
        headers: dict[str, str] | None = None,
    ) -> Response:
        metrics.HTTP_EVENTS.labels(RESULTS.get(status, "invalid")).inc(count)
        body = orjson.dumps({"error": code, "detail": detail})
        return web.bytes(body, content_type="application/json", status=status, headers=headers)

    async def take(web: View, request: Request, kind: str | None) -> Response:
        http: Any = request
        tenant = tenant_of(http.headers.get("Authorization"), keys)
        if tenant is None:
            return problem(
                web,
                401,
                "unauthorized",
                "a write key is needed: HTTP Basic with the key as"
                " the user name, or Authorization: Bearer <key>",
            )
        limit = settings.max_body_bytes
        declared = http.content_length
        body = (
            None
            if declared is not None and declared > limit
            else await read_body(http.content, limit)
        )
        if body is None:
            return problem(web, 413, "too_large", f"the body is over {limit} bytes")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return problem(web, 400, "not_json", f"the body is not JSON: {exc}")
        try:
            events = events_of(doc, kind, tenant, int(time.time() * 1000), config)
        except BadCall as exc:
            return problem(web, 400, exc.code, exc.detail)
        if len(events) > settings.burst:  # could never be let through at once
            detail = f"batch: {len(events)} calls, over http_ingest.burst ({settings.burst:g})"
            return problem(web, 413, "too_many", detail)
        wait = buckets[tenant].take(time.monotonic(), len(events))
        if wait > 0:
            detail = f"over {settings.events_per_second:g} events a second for this write key"
            return problem(
                web,
                429,
                "rate_limited",
                detail,
                len(events),
                {"Retry-After": str(math.ceil(wait))},
            )
        try:
            await produce(app, topic, events)
        except Exception as exc:  # the broker did not take them: the caller sends again
            logger.warning("http ingest: the broker did not take %d events: %r", len(events), exc)
            return problem(
                web,
                503,
                "unavailable",
                "the broker did not take the events",
                len(events),
                {"Retry-After": "1"},
            )
        metrics.HTTP_EVENTS.labels("accepted").inc(len(events))
        return web.json({"success": True, "accepted": len(events)})

    def endpoint(kind: str | None) -> type[View]:
        class Calls(View):
            async def post(self, request: Request) -> Response:
                return await take(self, request, kind)

        return Calls

    app.page("/v1/track")(endpoint("track"))
    app.page("/v1/identify")(endpoint("identify"))
    app.page("/v1/batch")(endpoint(None))
