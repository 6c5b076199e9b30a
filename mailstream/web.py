"""HTTP views on the worker's web port: health and the user API, routed to the key's owner."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from yarl import URL

from mailstream.app import app, config, events_topic, settled
from mailstream.runtime import suppression_list
from mailstream.users import UserState, user_key
from tables.users import users

logger = logging.getLogger(__name__)

ROUTED_HEADER = "X-Mailstream-Routed"


def json_response(web: View, body: Any, status: int = 200) -> Response:
    return web.bytes(orjson.dumps(body), content_type="application/json", status=status)


def _worker_urls() -> list[URL]:
    try:
        return [URL(u) for u in app.router.external_topics_metadata()]
    except Exception:  # no assignment yet
        return []


async def _ask(url: URL, request: Request) -> tuple[int, bytes]:
    target = (
        request.url.with_scheme(url.scheme or "http").with_host(url.host or "").with_port(url.port)
    )
    async with app.http_client.get(target, headers={ROUTED_HEADER: "1"}) as resp:
        return resp.status, await resp.read()


def _is_me(url: URL) -> bool:
    me = URL(app.conf.canonical_url)
    return (url.host, url.port) == (me.host, me.port)


@app.page("/health")
async def health(web: View, request: Request) -> Response:
    return json_response(
        web,
        {
            "status": "ok",
            "ready": settled() and suppression_list.ready.is_set(),
            "suppression_list": len(suppression_list) if suppression_list.ready.is_set() else None,
            "app_id": config.app_id,
            "url": str(app.conf.canonical_url),
            "partitions": users.active_partitions(),
        },
    )


@app.page("/api/users/{user_id}")
async def user_detail(web: View, request: Request, user_id: str) -> Response:
    """A user's state, from whichever worker owns the user's partition."""
    tenant = request.query.get("tenant") or config.ingest.default_tenant
    raw = users.find(user_key(tenant, user_id))
    if raw is not None:
        return json_response(web, UserState.decode(raw).to_json())
    not_found = {"error": f"no user {user_id!r} in tenant {tenant!r}"}
    if request.headers.get(ROUTED_HEADER):
        return json_response(web, not_found, 404)
    # Ask the owner of the partition the default partitioner gives this user id; then, for
    # producers that partition differently, every other worker.
    try:
        owner = app.router.external_topic_key_store(events_topic, user_id.encode())
    except (KeyError, SameNode):
        owner = None
    candidates = ([owner] if owner is not None else []) + [u for u in _worker_urls() if u != owner]
    unreachable = 0
    for url in candidates:
        if _is_me(url):
            continue
        try:
            status, body = await _ask(url, request)
        except Exception as exc:
            logger.warning("asking %s for user %r failed: %r", url, user_id, exc)
            unreachable += 1
            continue
        if status == 200:
            return web.bytes(body, content_type="application/json")
    if unreachable:
        return json_response(
            web, {"error": f"{unreachable} worker(s) did not answer; try again"}, 503
        )
    return json_response(web, not_found, 404)
