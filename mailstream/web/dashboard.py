"""The operator's dashboard: accounting, send rate, lag, funnels, dead letters and users,
as HTML pages and their JSON twins. Figures that span partitions are gathered from
every worker; each worker reports its own at /api/local/stats."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.web import Request, Response, View

from mailstream.config.schema import default_workflows
from mailstream.core.ingest_batch import REROUTED
from mailstream.core.user_state import UserState
from mailstream.delivery.fair_share import CLASSES
from mailstream.delivery.pacing import warmup_cap
from mailstream.delivery.state_machine import queue_ready, rank_bounds
from mailstream.kafka.access import kafka_access
from mailstream.kafka.clients import start_client
from mailstream.kafka.dead_letters import describe
from mailstream.kafka.embedded_quirks import corrected_end_offsets
from mailstream.kafka.topics import topic_partitions
from mailstream.observability import metrics
from mailstream.state.store import Store
from mailstream.web.admin_auth import CSRF_COOKIE, SESSION_SECONDS
from mailstream.web.board import (
    label_funnel,
    partition_lag,
    suppression_summary,
    workflow_step_labels,
)
from mailstream.web.figures import Minutes, add_up, collect, figures, funnel, tenant_figures
from mailstream.web.login import Sessions, redirect, secured
from mailstream.web.pages import render_page
from mailstream.web.routes import Views, json_response, refused
from mailstream.workflows.health_snapshots import HealthSnapshots
from tables.deliveries import sent_on

logger = logging.getLogger(__name__)

DLQ_SHOWN = 20
BACKLOG_EVERY = 15.0  # seconds; Prometheus' usual scrape interval
SEND_CLASSES = dict(zip(("transactional", "marketing"), CLASSES, strict=True))


def oldest_ready(
    queue: Store, partitions: list[int], lanes: list[str], ranks: tuple[int, ...], now: int
) -> int | None:
    """The ready time (epoch ms) of the oldest send of ``ranks`` that may go at ``now``
    in these partitions of the delivery queue (None: none): the first of each lane and
    rank, as the queue orders its keys (mailstream.delivery.state_machine.QueueKey)."""
    found = [
        queue_ready(key)
        for p in partitions
        for lane in lanes
        for r in ranks
        for key in queue.keys_between(p, *rank_bounds(r, now, lane), 1)
    ]
    return min(found, default=None)


class Dashboard:
    """The dashboard's figures: this worker's own, and every worker's added up."""

    def __init__(self, views: Views, health: HealthSnapshots) -> None:
        self.rt = views.rt
        self.config = views.config
        self.views = views
        self.health = health
        self.users = self.rt.tables.users
        self.timers = self.rt.tables.timers
        self.deliveries = self.rt.tables.deliveries
        self.minutes = Minutes()
        # (workflow, step) -> enrollments, this worker
        self.waiting: Counter[tuple[str, int]] = Counter()
        self.dlq_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._step_labels: dict[str, dict[str, str]] | None = None

    async def snapshot_figures(self) -> None:
        self.minutes.add(time.monotonic(), figures(collect()))

    async def count_waiting(self) -> None:
        """Count the enrollments at each step in this worker's partitions, a chunk at a time
        so the agents keep running."""
        if not self.rt.settled():
            return
        found: Counter[tuple[str, int]] = Counter()
        for partition in self.users.active_partitions():
            for n, (key, raw) in enumerate(self.users.items(partition)):
                try:
                    enrollments = UserState.decode(raw).enrollments
                except (ValueError, KeyError, struct.error) as exc:  # never stop the worker
                    logger.warning("cannot read the user record %r: %s", key[:80], exc)
                    continue
                for name, enrollment in enrollments.items():
                    found[(name, int(enrollment.get("step", 0)))] += 1
                if n % 1000 == 999:
                    await asyncio.sleep(0)
        self.waiting.clear()
        self.waiting.update(found)
        metrics.TIMERS_PENDING.set(
            sum(sum(1 for _ in self.timers.items(p)) for p in self.timers.active_partitions())
        )

    async def measure_backlog(self) -> None:
        """For alerting: the events of this worker's partitions not yet applied, and how
        long the oldest send that may go has waited (mailstream.observability.metrics)."""
        if not self.rt.settled() or not self.rt.broker_contact.reachable(time.monotonic()):
            return
        try:
            await self._measure_backlog()
        except Exception as exc:  # a timer that raised would stop the worker; the next run tries
            logger.warning("measuring the backlog failed: %r", exc)

    async def _measure_backlog(self) -> None:
        partitions = self.users.active_partitions()
        applied = {p: self.users.progress(p) for p in partitions}  # before the ends
        ends = await self.events_end_offsets(partitions)
        lags = [partition_lag(ends.get(p), applied[p])["lag"] for p in partitions]
        if None not in lags:  # unknown: the last measure stands, /health says why
            metrics.EVENTS_LAG.set(sum(lag or 0 for lag in lags))
        queue = self.rt.tables.delivery_queue
        owned, lanes = queue.active_partitions(), self.rt.tenancy.names
        now = int(time.time() * 1000)
        for category, ranks in SEND_CLASSES.items():
            ready = oldest_ready(queue, owned, lanes, ranks, now)
            age = 0.0 if ready is None else max(0, now - ready) / 1000
            metrics.labelled(metrics.SEND_QUEUE_AGE, category).set(age)

    async def events_end_offsets(self, partitions: list[int]) -> dict[int, int | None]:
        """The end offsets of these partitions of the events topic, from the broker.

        Faust's consumer knows no current high-water mark for them: the direct reader reads
        the events topic while Faust's fetching of it is paused. On the embedded broker the
        ends come from a fetch (``corrected_end_offsets``): its ListOffsets answer reads short
        after a multi-record batch, which showed a high-water mark below "applied"."""
        if not partitions:
            return {}
        tps = [TopicPartition(self.config.topics.events, p) for p in partitions]
        # ListOffsets read_committed: the last stable offset, as far as the direct reader
        # (read_committed) can get; an open upstream transaction is not lag
        consumer = AIOKafkaConsumer(
            **kafka_access(self.config).client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        config = self.config
        try:
            await start_client(consumer)
            try:
                listed: dict[Any, int] = await consumer.end_offsets(tps)
            finally:
                await consumer.stop()
            listed = await corrected_end_offsets(
                kafka_access(config), listed, embedded=config.broker.embedded, timeout=3.0
            )
        except Exception as exc:  # the dashboard shows the lag as unknown
            logger.warning("cannot read the events topic's end offsets: %r", exc)
            return {p: None for p in partitions}
        return {tp.partition: end for tp, end in listed.items()}

    async def local_stats(self) -> dict[str, Any]:
        """This worker's own figures: counters since it started, their growth over the last
        minute, its partitions' lag, its funnel, and the sends its partitions made today."""
        samples = collect()
        now = figures(samples)
        partitions = self.users.active_partitions()
        day = datetime.now(UTC).date().isoformat()
        applied = {
            p: self.users.progress(p) for p in partitions
        }  # before the ends: never above them
        ends = await self.events_end_offsets(partitions)
        lag = {str(p): partition_lag(ends.get(p), applied[p]) for p in partitions}
        return {
            "workers": 1,
            "totals": now,
            "last_minute": self.minutes.last_minute(time.monotonic(), now),
            "lag": lag,
            "funnel": funnel(self.waiting, samples),
            "sent_today": sum(sent_on(self.deliveries, p, day) for p in partitions),
            "workflow_figures": self.health.local_figures(),
            "ledger": self.ledger(partitions),
            "tenants": self._tenants(samples, day),
        }

    def ledger(self, partitions: list[int]) -> dict[str, Any]:
        """Durable accounting of this worker's partitions: every event each has consumed,
        by outcome, since the partition's first event (kept in the users table, so it
        survives restarts and moves with the partition). ``events`` counts the final
        outcomes: each produced event once, in its user's partition, whichever partition it
        was first ``rerouted`` from."""
        outcomes: dict[str, int] = {}
        for p in partitions:
            raw = self.users.progress_note(p)
            for outcome, n in (orjson.loads(raw) if raw else {}).items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
        final = sum(n for outcome, n in outcomes.items() if outcome != REROUTED)
        return {"partitions": len(partitions), "events": final, **outcomes}

    def _tenants(self, samples: Any, day: str) -> dict[str, dict[str, float]]:
        """Per tenant: its figures since start, and the sends its lane made today here."""
        rows = tenant_figures(samples)
        for name in self.rt.tenancy.names:
            row = rows.setdefault(name, {})
            row["sent_today"] = sum(
                sent_on(self.deliveries, p, day, name) for p in self.delivery_partitions()
            )
        return rows

    def delivery_partitions(self) -> list[int]:
        queue = self.rt.tables.delivery_queue
        return queue.active_partitions() if self.config.delivery.enabled else []

    async def gather(self) -> dict[str, Any]:
        """Every worker's figures, added up; this worker's own if another does not answer."""
        parts = [await self.local_stats()]
        missing = 0
        for url in self.views.worker_urls():
            if self.views.is_me(url):
                continue
            try:
                status, body = await self.views.ask(url, "/api/local/stats")
            except Exception as exc:
                logger.warning("asking %s for its figures failed: %r", url, exc)
                status, body = 0, b""
            if status == 200:
                parts.append(orjson.loads(body))
            else:
                missing += 1
        total: dict[str, Any] = add_up(parts)
        d = self.config.delivery
        cap = (
            warmup_cap(d.warmup.daily_caps, d.warmup.start, datetime.now(UTC).date())
            if d.warmup
            else None
        )
        total["missing_workers"] = missing
        total["send"] = {
            "per_s_last_minute": round(total["last_minute"]["sent"] / 60.0, 2),
            "rate_limit": d.rate_limit,
            "warmup_cap_today": cap,
            "sent_today": total["sent_today"],
        }
        total["funnel"] = label_funnel(total.get("funnel") or {}, self.step_labels())
        total["dead_letters"] = await self.latest_dead_letters()
        total["workflow_health"] = self.health.workflow_health(total.get("workflow_figures"))
        return total

    def step_labels(self) -> dict[str, dict[str, str]]:
        """Each workflow's step labels (ids), from the config; a tenant's own workflows add
        theirs for names the defaults lack. Worked out once."""
        if self._step_labels is None:
            labels: dict[str, dict[str, str]] = {}
            for tenant in [None, *self.config.tenants]:
                cfg = self.config if tenant is None else self.config.tenant(tenant)
                specs = cfg.workflows if cfg.workflows is not None else default_workflows()
                for name, found in workflow_step_labels(specs).items():
                    labels.setdefault(name, found)
            self._step_labels = labels
        return self._step_labels

    async def latest_dead_letters(self) -> list[dict[str, Any]]:
        """The newest dead letters on the topic, newest first (re-read at most every 5 s)."""
        if time.monotonic() - self.dlq_cache[0] < 5.0:
            return self.dlq_cache[1]
        parts = await topic_partitions(kafka_access(self.config), self.config.topics.dlq)
        consumer = AIOKafkaConsumer(
            **kafka_access(self.config).client_kwargs(), group_id=None, enable_auto_commit=False
        )
        await start_client(consumer)
        letters: list[Any] = []
        try:
            tps = [TopicPartition(self.config.topics.dlq, p) for p in parts]
            if tps:
                consumer.assign(tps)
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    consumer.seek(tp, max(0, ends[tp] - DLQ_SHOWN))
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=200)
                    for messages in batch.values():
                        letters.extend(messages)
                    if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                        break
        finally:
            await consumer.stop()
        letters.sort(key=lambda m: m.timestamp, reverse=True)
        shown = []
        for m in letters[:DLQ_SHOWN]:
            doc = describe(m)
            doc.pop("value", None)  # the original bytes may hold personal data
            doc.pop("value_base64", None)
            doc["at"] = datetime.fromtimestamp(m.timestamp / 1000, UTC).isoformat(
                timespec="seconds"
            )
            shown.append(doc)
        self.dlq_cache = (time.monotonic(), shown)
        return shown


def register(views: Views, sessions: Sessions, health: HealthSnapshots) -> Dashboard:
    """The dashboard's pages and their JSON twins on the views' app, and the timers that
    keep its figures."""
    board = Dashboard(views, health)
    app = views.rt.app
    auth, authorised = views.auth, views.authorised
    login_page, set_cookie = sessions.login_page, sessions.set_cookie

    async def local_stats_view(web: View, request: Request) -> Response:
        nonce = views.forwarded_by_member(request)  # another worker's board.gather(), signed
        if nonce is None and not authorised(request):
            return secured(refused(web))
        return secured(views.member_answer(web, await board.local_stats(), nonce))

    async def dashboard(web: View, request: Request) -> Response:
        if not authorised(request):
            return login_page(web, 401, request=request)
        figures_ = await board.gather()
        csrf = auth.new_csrf()
        html = render_page("dashboard.html", s=figures_, csrf=csrf, refresh=10)
        response = web.html(html)
        set_cookie(response, CSRF_COOKIE, csrf, SESSION_SECONDS)
        return secured(response)

    async def dashboard_json(web: View, request: Request) -> Response:
        if not authorised(request):
            return secured(refused(web))
        return secured(json_response(web, await board.gather()))

    async def workflows_health_json(web: View, request: Request) -> Response:
        """Each workflow's health score, category, figures and recommendations (all workers)."""
        if not authorised(request):
            return secured(refused(web))
        figures_ = await board.gather()
        body = {
            "workers": figures_["workers"],
            "missing_workers": figures_["missing_workers"],
            **figures_["workflow_health"],
        }
        return secured(json_response(web, body))

    async def user_search(web: View, request: Request) -> Response:
        if not authorised(request):
            return login_page(web, 401, request=request)
        http: Any = request
        user_id = (http.query.get("user_id") or "").strip()
        if not user_id:
            return redirect(web, "/")
        return redirect(web, "/users/" + quote(user_id, safe=""))

    async def user_page(web: View, request: Request, user_id: str) -> Response:
        if not authorised(request):
            return login_page(web, 401, request=request)
        status, body = await views.find_user(request, user_id)
        csrf = auth.new_csrf()
        sup = suppression_summary(body) if status == 200 else None
        html = render_page("user.html", user_id=user_id, status=status, u=body, sup=sup, csrf=csrf)
        response = web.html(html, status=status)
        set_cookie(response, CSRF_COOKIE, csrf, SESSION_SECONDS)
        return secured(response)

    app.timer(interval=5.0)(board.snapshot_figures)
    app.timer(interval=views.config.web.funnel_every)(board.count_waiting)
    app.timer(interval=BACKLOG_EVERY)(board.measure_backlog)
    app.page("/api/local/stats")(local_stats_view)
    app.page("/")(dashboard)
    app.page("/api/dashboard")(dashboard_json)
    app.page("/api/workflows/health")(workflows_health_json)
    app.page("/users")(user_search)
    app.page("/users/{user_id}")(user_page)
    return board
