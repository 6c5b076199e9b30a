"""HTTP views on the worker's web port: health, and the user API routed to the key's
owner; plus what the other views share: admin access and asking other workers.

A lookup forwarded to another worker carries no credential of the caller's: it is signed
with the cluster secret (mailstream.core.cluster_trust), and so is the answer."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import orjson
from aiohttp.web import Response as AioResponse
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from yarl import URL

from mailstream.config.schema import Config
from mailstream.core.cluster_trust import REQUEST_HEADER, RESPONSE_HEADER, NonceGuard, request_nonce
from mailstream.core.user_state import UserState, user_key
from mailstream.delivery.state_machine import Delivery, delivery_key
from mailstream.exceptions import ConfigError
from mailstream.kafka.partitioning import partition_for
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.web.admin_auth import SESSION_COOKIE, AdminAuth, bearer_matches, mask_email

logger = logging.getLogger(__name__)

ROUTED_HEADER = "X-Mailstream-Routed"


def admin_auth(config: Config, env: Mapping[str, str]) -> AdminAuth:
    var = config.web.admin_token_env
    token = env.get(var) or ""
    if len(token) < 16:
        raise ConfigError(
            f"web.admin_token_env: set ${var} to a random token of 16 or more characters;"
            " it opens the dashboard and the API (every worker needs the same one)"
        )
    return AdminAuth(token)


class UnsignedAnswer(Exception):
    """A worker answered a forwarded request without the cluster's signature."""


def json_response(web: View, body: Any, status: int = 200) -> Response:
    return web.bytes(orjson.dumps(body), content_type="application/json", status=status)


def refused(web: View) -> Response:
    return json_response(web, {"error": "unauthorized", "detail": "the admin token is needed"}, 401)


class Views:
    """What the worker's views share: admin access, the workers of the deployment and
    asking them, and the users this worker owns."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.app = rt.app
        self.config = rt.config
        self.cluster = rt.cluster
        self.users = rt.tables.users
        self.deliveries = rt.tables.deliveries
        self.auth = admin_auth(rt.config, rt.env)
        # nonces of the forwarded requests this worker answered, so none is answered twice
        self.forwarded_nonces = NonceGuard()

    def authorised(self, request: Request) -> bool:
        """The admin token as a bearer header, or a valid session cookie."""
        http: Any = request
        if self.auth.bearer_ok(http.headers.get("Authorization")):
            return True
        return self.auth.session_ok(http.cookies.get(SESSION_COOKIE))

    def worker_urls(self) -> list[URL]:
        try:
            return [URL(u) for u in self.app.router.external_topics_metadata()]
        except Exception:  # no assignment yet
            return []

    def is_me(self, url: URL) -> bool:
        me = URL(self.app.conf.canonical_url)
        return (url.host, url.port) == (me.host, me.port)

    def forwarded_by_member(self, request: Request) -> str | None:
        """The nonce of a request another worker forwarded, signed with the cluster secret
        (fresh, first use); None for any other request."""
        http: Any = request
        header = http.headers.get(REQUEST_HEADER)
        if header is None:
            return None
        problem = self.cluster.check_request(
            http.method,
            http.raw_path,
            header,
            time.time(),
            self.config.cluster.request_max_age,
            self.forwarded_nonces,
        )
        if problem is not None:
            logger.warning("a forwarded request was refused: %s", problem)
            return None
        return request_nonce(header)

    def member_answer(self, web: View, body: Any, nonce: str | None, status: int = 200) -> Response:
        """A JSON answer; to a request another worker forwarded (``nonce``), signed back."""
        data = orjson.dumps(body)
        headers = self.cluster.answer_header(nonce, status, data) if nonce is not None else None
        return web.bytes(data, content_type="application/json", status=status, headers=headers)

    async def ask(self, url: URL, path_qs: str) -> tuple[int, bytes]:
        """GET a path of another worker, signed with the cluster secret (never with the
        caller's credentials), marked as already routed; the answer must be signed too."""
        target = URL(str(url).rstrip("/") + path_qs)
        path = target.raw_path_qs  # as it goes on the wire, and as the receiver reads it
        nonce = secrets.token_urlsafe(18)
        headers = {
            ROUTED_HEADER: "1",
            **self.cluster.request_headers("GET", path, time.time(), nonce),
        }
        async with self.app.http_client.get(target, headers=headers) as resp:
            body = await resp.read()
            if not self.cluster.answer_ok(
                nonce, resp.status, body, resp.headers.get(RESPONSE_HEADER)
            ):
                raise UnsignedAnswer(
                    f"HTTP {resp.status} without the cluster's signature: not a worker of this"
                    " deployment, or its cluster secret differs (self.cluster.secret_env)"
                )
            return resp.status, body

    def local_user(self, tenant: str, user_id: str, full: bool) -> dict[str, Any] | None:
        """A user this worker owns, with the delivery records of their recent sends."""
        key = user_key(tenant, user_id)
        for partition in self.users.active_partitions():
            raw = self.users.get(partition, key)
            if raw is None:
                continue
            state = UserState.decode(raw)
            view = state.to_json()
            sent: dict[str, Any] = {}
            for decision in view["send_decisions"]:
                send_id = decision["send_id"]
                record = self.deliveries.get(partition, delivery_key(tenant, send_id))
                if record is not None and send_id not in sent:
                    sent[send_id] = {"send_id": send_id, **Delivery.decode(record).to_json()}
            view["deliveries"] = list(sent.values())
            email = view["traits"].get("email")
            view["global_suppression"] = self.global_suppression(email)
            if isinstance(email, str) and not full:
                view["traits"] = {**view["traits"], "email": mask_email(email)}
            return view
        return None

    def global_suppression(self, email: Any) -> dict[str, Any] | None:
        """The global suppression list's entry for a user's address (every worker holds the
        whole list), so a user's view shows what the send policy sees."""
        if not isinstance(email, str):
            return None
        try:
            entry = self.rt.suppression_list.get(email)
        except RuntimeError:  # the list is not open yet
            return None
        return None if entry is None else entry.to_json()

    def owner_of(self, user_id: str) -> URL | None:
        """The worker that owns the events partition mailstream's partitioner gives
        ``user_id`` (Faust's router asks its producer, which may not yet know the topic)."""
        topic = self.config.topics.events
        partition = partition_for(user_id.encode(), self.config.topics.partitions)
        assignor: Any = self.app.assignor  # Faust's own, whose type leaves this out
        for host, topics in assignor.external_topics_metadata().items():
            if partition in topics.get(topic, ()):
                return URL(host)
        return None

    async def find_user(
        self, request: Request, user_id: str, forwarded: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """A user's view from whichever worker owns the user's partition (asked there as
        ``/api/users/{user_id}`` with this request's query). A request ``forwarded`` by
        another worker is answered from this one's partitions only."""
        http: Any = request
        tenant = http.query.get("tenant") or self.config.ingest.default_tenant
        full = http.query.get("full") == "1"
        view = self.local_user(tenant, user_id, full)
        if view is not None:
            return 200, view
        not_found = {"error": f"no user {user_id!r} in tenant {tenant!r}"}
        if forwarded or http.headers.get(ROUTED_HEADER):
            return 404, not_found
        # Ask the owner of the partition the default partitioner gives this user id; then, for
        # producers that partition differently, every other worker.
        owner = self.owner_of(user_id)
        candidates = ([owner] if owner is not None else []) + [
            u for u in self.worker_urls() if u != owner
        ]
        unreachable = 0
        path_qs = "/api/users/" + quote(user_id, safe="")
        if http.query_string:
            path_qs += "?" + http.query_string
        for url in candidates:
            if self.is_me(url):
                continue
            try:
                status, body = await self.ask(url, path_qs)
            except Exception as exc:
                logger.warning("asking %s for a user failed: %r", url, exc)
                unreachable += 1
                continue
            if status == 200:
                return 200, orjson.loads(body)
        if unreachable:
            return 503, {"error": f"{unreachable} worker(s) did not answer; try again"}
        return 404, not_found


def register(rt: Runtime) -> Views:
    """Health, metrics and the user API, on ``rt``'s app; the views the others share."""
    views = Views(rt)
    app, config = rt.app, rt.config
    suppression_list, broker_contact = rt.suppression_list, rt.broker_contact

    def ready(now: float) -> bool:
        # not while the broker does not answer: nothing this worker takes in can be
        # made durable (mailstream.kafka.broker_watch)
        return rt.settled() and suppression_list.ready.is_set() and broker_contact.reachable(now)

    # read at each scrape, as /health reads them
    metrics.READY.set_function(lambda: float(ready(time.monotonic())))
    metrics.SUPPRESSION_LIST_LOADED.set_function(lambda: float(suppression_list.ready.is_set()))

    async def metrics_page(web: View, request: Request) -> Response:
        """Prometheus text; with ``$MAILSTREAM_METRICS_TOKEN`` set, only for that bearer."""
        token = rt.env.get(config.web.metrics_token_env)
        http: Any = request
        if token and not bearer_matches(http.headers.get("Authorization"), token):
            return web.text("the metrics token is needed\n", status=401)
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        # ?name[]=...: only those metrics, as Prometheus' own client serves them
        names = http.query.getall("name[]", [])
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        return cast(Response, AioResponse(body=generate_latest(registry), headers=headers))

    async def health(web: View, request: Request) -> Response:
        now = time.monotonic()
        return json_response(
            web,
            {
                "status": "ok",
                "ready": ready(now),
                "broker": broker_contact.status(now),
                "suppression_list": len(suppression_list)
                if suppression_list.ready.is_set()
                else None,
                "app_id": config.app_id,
                "url": str(app.conf.canonical_url),
                "partitions": views.users.active_partitions(),
            },
        )

    async def user_detail(web: View, request: Request, user_id: str) -> Response:
        """A user's state, from whichever worker owns the user's partition: for the admin, or
        for another worker asking on the admin's behalf (its answer signed back)."""
        nonce = views.forwarded_by_member(request)
        if nonce is None and not views.authorised(request):
            return refused(web)
        http: Any = request
        if nonce is None and http.query.get("export") == "1":
            # an access request (mailstream users export): who and when, never the data
            logger.info(
                "audit: user %r of tenant %r exported by an admin from %s",
                user_id[:80],
                http.query.get("tenant") or config.ingest.default_tenant,
                http.remote,
            )
        status, body = await views.find_user(request, user_id, forwarded=nonce is not None)
        return views.member_answer(web, body, nonce, status)

    app.page("/metrics")(metrics_page)
    app.page("/health")(health)
    app.page("/api/users/{user_id}")(user_detail)
    return views
