"""The timer agent: runs due waits, inactivity checks and held sends, a few times a second."""

from __future__ import annotations

import logging
import time

from mailstream import metrics
from mailstream.app import app, settled
from mailstream.health import known_workflow, timer_workflow
from mailstream.outbox import AFTER_STATE, STATE_LOCK, Outbox, flush
from mailstream.runtime import applier_for, automation_for, suppression_list
from mailstream.timers import TimerKey, due_bound
from mailstream.users import UserState
from tables.timers import timers
from tables.users import users

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2
MAX_PER_TICK = 2000  # per partition; the rest wait for the next tick


async def fire_partition(partition: int, now: int) -> int:
    """Run the timers of one partition that are due at ``now``; return how many."""
    keys = timers.keys_before(partition, due_bound(now), MAX_PER_TICK)
    if not keys:
        return 0
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
    await flush(app.producer, outbox)
    metrics.TIMERS_FIRED.inc(len(keys))
    return len(keys)


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
