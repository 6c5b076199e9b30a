"""HTTP views that take feedback in: provider webhooks and one-click unsubscribe links.

Both only verify and normalise, then hand the feedback on and answer once the broker has
it: to the feedback topic (keyed by user id, so the user's own worker applies it), or,
for a signed provider webhook, first to the replay guard (agents/guard_replays.py), which
lets each replay key through once. A bad request gets a 4xx and changes nothing; a
replay gets a 200 (so a provider's retry stops) and changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.web import Request, Response, View

from mailstream.config.kafka_sections import TopicsConfig
from mailstream.feedback.normalised import UNSUBSCRIBE, Feedback, destination
from mailstream.feedback.provider_webhooks import MAX_BODY, Claim, WebhookRejected, WebhookRequest
from mailstream.kafka.partitioning import keyed_partition
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime, unsubscribe_tokens, webhook_handlers
from mailstream.web.pages import render_page
from mailstream.web.request_body import content_type, read_body, read_form

logger = logging.getLogger(__name__)


async def publish(app: Any, topics: TopicsConfig, claims: list[Claim]) -> None:
    """Hand each claim on, and wait until the broker has them all: a guarded one to the
    replay guard (keyed by its replay key, so every claim of a key meets in one place),
    the others' feedback straight to where it applies."""
    pending = []
    for claim in claims:
        if claim.key is not None:
            topic, key = topics.feedback_claims, claim.key.encode()
            partition = await keyed_partition(app.producer, topic, key)
            sent = await app.producer.send(topic, key, claim.encode(), partition, None, None)
            pending.append(sent)
            continue
        for fb in claim.feedback:
            found = destination(fb, topics.feedback, topics.suppression)
            if found is None:
                metrics.FEEDBACK.labels(fb.kind, "no_user").inc()
                continue
            topic, key, value = found
            partition = await keyed_partition(app.producer, topic, key)  # the user's
            pending.append(await app.producer.send(topic, key, value, partition, None, None))
            if topic == topics.suppression:
                metrics.FEEDBACK.labels(fb.kind, "suppressed_by_address").inc()
    for future in pending:
        await future


def problem(web: View, status: int, reason: str, detail: str) -> Response:
    return web.json({"error": reason, "detail": detail}, status=status)


def _page(web: View, state: str, status: int = 200) -> Response:
    titles = {"confirm": "Unsubscribe", "done": "You are unsubscribed", "invalid": "Link not valid"}
    html = render_page("unsubscribe.html", state=state, title=titles[state], note="")
    return web.html(html, status=status)


def register(rt: Runtime) -> None:
    """Provider webhooks and one-click unsubscribe links, on ``rt``'s app. A webhook
    without its secret, or a missing unsubscribe secret, fails here naming its key."""
    app, topics = rt.app, rt.config.topics
    handlers = webhook_handlers(rt.config, rt.env)
    tokens = unsubscribe_tokens(rt.config, rt.env)

    class Webhooks(View):
        """POST /webhooks/{provider}: a provider's event webhook."""

        async def post(self, request: Request, provider: str) -> Response:
            http: Any = request  # aiohttp's request, under Faust's narrower type
            handler = handlers.get(provider)
            if handler is None:
                metrics.WEBHOOKS.labels("unknown", "not_configured").inc()
                return problem(
                    self, 404, "not_configured", f"no webhook configured for {provider!r}"
                )
            declared = http.content_length
            too_large = declared is not None and declared > MAX_BODY
            body = None if too_large else await read_body(http.content, MAX_BODY)
            if body is None:
                metrics.WEBHOOKS.labels(provider, "too_large").inc()
                return problem(self, 413, "too_large", f"the body is over {MAX_BODY} bytes")
            webhook = WebhookRequest(dict(http.headers), body, content_type(http) or "")
            try:
                claims = handler.handle(webhook, time.time())
            except WebhookRejected as rejected:
                metrics.WEBHOOKS.labels(provider, rejected.reason).inc()
                return problem(self, rejected.status, rejected.reason, rejected.detail)
            await publish(app, topics, claims)
            metrics.WEBHOOKS.labels(provider, "accepted").inc()
            return self.json({"accepted": sum(len(claim.feedback) for claim in claims)})

    class OneClickUnsubscribe(View):
        """GET: a page with a button. POST ``List-Unsubscribe=One-Click`` (RFC 8058): done."""

        async def get(self, request: Request, token: str) -> Response:
            if tokens.verify(token) is None:
                metrics.UNSUBSCRIBES.labels("forged").inc()
                return _page(self, "invalid", 403)
            return _page(self, "confirm")

        async def post(self, request: Request, token: str) -> Response:
            found = tokens.verify(token)
            if found is None:
                metrics.UNSUBSCRIBES.labels("forged").inc()
                return _page(self, "invalid", 403)
            http: Any = request
            form = await read_form(http) or {}  # a Content-Type that does not parse: no form
            if form.get("List-Unsubscribe") != "One-Click":
                metrics.UNSUBSCRIBES.labels("bad_request").inc()
                return self.json(
                    {"error": "bad_request", "detail": "expected List-Unsubscribe=One-Click"},
                    status=400,
                )
            fb = Feedback(
                kind=UNSUBSCRIBE,
                provider="one-click",
                at=int(time.time() * 1000),
                user_id=found.user_id,
                tenant_id=found.tenant_id,
                send_id=found.send_id,
                event_id=f"unsubscribe:{found.send_id}",
            )
            await publish(app, topics, [Claim((fb,))])
            metrics.UNSUBSCRIBES.labels("done").inc()
            return _page(self, "done")

    app.page("/webhooks/{provider}")(Webhooks)
    app.page("/unsubscribe/{token}")(OneClickUnsubscribe)
