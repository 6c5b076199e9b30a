"""The timer agent: runs due waits, inactivity checks and held sends, a few times a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson

from mailstream.app import app, config, settled
from mailstream.core.isolate import ENGINE_ERROR, Unsettled, describe, isolate
from mailstream.core.user_state import UserState, split_key
from mailstream.observability import metrics
from mailstream.runtime.components import applier_for, automation_for, suppression_list
from mailstream.state.staged_flush import AFTER_STATE, STATE_LOCK, Outbox, flush
from mailstream.state.timer_keys import TimerKey, due_bound
from mailstream.workflows.apply_effects import dead_letter_headers
from mailstream.workflows.health_labels import known_workflow, timer_workflow
from tables.timers import timers
from tables.users import users

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2
MAX_PER_TICK = 2000  # per partition; the rest wait for the next tick


async def fire_partition(partition: int, now: int) -> int:
    """Run the timers of one partition that are due at ``now``; return how many.

    A timer the engine fails on by itself is found by splitting (mailstream.core.isolate),
    dead-lettered with the error and deleted; the others fire as usual."""
    keys = timers.keys_before(partition, due_bound(now), MAX_PER_TICK)
    if not keys:
        return 0
    unsettled = Unsettled()

    async def attempt(part: Sequence[bytes]) -> None:
        outbox = fire(partition, part, now)
        try:
            await flush(app.producer, outbox)
        except Exception:
            unsettled.add(outbox)  # some of it may have reached the broker
            raise
        metrics.TIMERS_FIRED.inc(len(part))

    async def give_up(raw: bytes, exc: Exception) -> None:
        await reject(partition, raw, exc)

    await isolate(keys, attempt, give_up)
    if unsettled:
        await flush(app.producer, unsettled.as_stored())
    return len(keys)


def fire(partition: int, keys: Sequence[bytes], now: int) -> Outbox:
    """What firing ``keys`` (timer keys of ``partition``) decides, in an outbox."""
    outbox = Outbox()
    touched: dict[bytes, UserState] = {}
    for raw in keys:
        timer = TimerKey.decode(raw)
        outbox.put(timers, partition, raw, None, AFTER_STATE)
        state = touched.get(timer.user_key)
        if state is None:
            stored = users.get(partition, timer.user_key)
            if stored is None:
                continue
            state = UserState.decode(stored)
        workflow = timer_workflow(timer.kind, timer.workflow, state.deferred)
        automation = automation_for(state.tenant_id)
        fx = automation.on_timer(state, timer.kind, timer.workflow, timer.due, now)
        lag = max(0, now - timer.due) / 1000
        metrics.TIMER_LAG.observe(lag)
        if known_workflow(workflow, automation.engine.workflows):
            metrics.WORKFLOW_TIMER_LAG.labels(workflow).observe(lag)
        if fx.changed:
            touched[timer.user_key] = state
        applier_for(state.tenant_id).apply(outbox, partition, timer.user_key, state, fx, now)
    for key, state in touched.items():
        outbox.put(users, partition, key, state.encode())
    return outbox


async def reject(partition: int, raw: bytes, exc: Exception) -> None:
    """A timer the worker fails on by itself: deleted, and dead-lettered with the error
    so that it can be looked into."""
    timer = TimerKey.decode(raw)
    tenant, user = split_key(timer.user_key)
    reason = f"firing the timer failed: {describe(exc)}"
    logger.warning(
        "timer %s of workflow %r for user %r dead-lettered (%s): %s",
        timer.kind,
        timer.workflow,
        user[:80],
        ENGINE_ERROR,
        describe(exc),
    )
    doc = {
        "tenant_id": tenant,
        "user_id": user,
        "timer": {"kind": timer.kind, "workflow": timer.workflow, "due": timer.due},
    }
    outbox = Outbox()
    outbox.put(timers, partition, raw, None, AFTER_STATE)
    headers = dead_letter_headers(ENGINE_ERROR, reason, f"timer:{timer.workflow}", partition, -1)
    outbox.send(config.topics.dlq, user.encode(), orjson.dumps(doc), headers)
    await flush(app.producer, outbox)
    metrics.TIMERS_FIRED.inc()
    metrics.DEAD_LETTERS.labels(ENGINE_ERROR).inc()


@app.timer(interval=TICK_SECONDS)
async def fire_due_timers() -> None:
    if not settled() or not suppression_list.ready.is_set():
        return
    async with STATE_LOCK:
        if not settled():
            return
        started = time.perf_counter()
        now = int(time.time() * 1000)
        for partition in users.active_partitions():
            await fire_partition(partition, now)
        metrics.TIMER_TICK.observe(time.perf_counter() - started)
