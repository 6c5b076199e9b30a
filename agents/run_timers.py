"""The timer agent: runs due waits, inactivity checks and held sends, a few times a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson

from mailstream.core.isolate import ENGINE_ERROR, Unsettled, describe, isolate
from mailstream.core.user_state import UserState, split_key
from mailstream.exceptions import Fenced
from mailstream.observability import metrics
from mailstream.runtime.components import Runtime
from mailstream.state.staged_flush import AFTER_STATE, STATE_LOCK, Outbox, flush
from mailstream.state.timer_keys import TimerKey, due_bound
from mailstream.workflows.apply_effects import dead_letter_headers
from mailstream.workflows.health_labels import known_workflow, timer_workflow

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2
MAX_PER_TICK = 2000  # per partition; the rest wait for the next tick


class TimerRunner:
    """Fires the due timers of the partitions this worker owns."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.app = rt.app
        self.timers = rt.tables.timers
        self.users = rt.tables.users

    async def fire_partition(self, partition: int, now: int) -> int:
        """Run the timers of one partition that are due at ``now``; return how many.

        A timer the engine fails on by itself is found by splitting (mailstream.core.isolate),
        dead-lettered with the error and deleted; the others fire as usual."""
        keys = self.timers.keys_before(partition, due_bound(now), MAX_PER_TICK)
        if not keys:
            return 0
        unsettled = Unsettled()

        async def attempt(part: Sequence[bytes]) -> None:
            outbox = self.fire(partition, part, now)
            try:
                await flush(self.rt.writer, outbox)
            except Exception:
                unsettled.add(outbox)  # some of it may have reached the broker
                raise
            metrics.TIMERS_FIRED.inc(len(part))

        async def give_up(raw: bytes, exc: Exception) -> None:
            await self.reject(partition, raw, exc)

        await isolate(keys, attempt, give_up)
        if unsettled:
            await flush(self.rt.writer, unsettled.as_stored())
        return len(keys)

    def fire(self, partition: int, keys: Sequence[bytes], now: int) -> Outbox:
        """What firing ``keys`` (timer keys of ``partition``) decides, in an outbox."""
        outbox = Outbox()
        touched: dict[bytes, UserState] = {}
        for raw in keys:
            timer = TimerKey.decode(raw)
            outbox.put(self.timers, partition, raw, None, AFTER_STATE)
            state = touched.get(timer.user_key)
            if state is None:
                stored = self.users.get(partition, timer.user_key)
                if stored is None:
                    continue
                state = UserState.decode(stored)
            workflow = timer_workflow(timer.kind, timer.workflow, state.deferred)
            automation = self.rt.automation_for(state.tenant_id)
            fx = automation.on_timer(state, timer.kind, timer.workflow, timer.due, now)
            lag = max(0, now - timer.due) / 1000
            metrics.TIMER_LAG.observe(lag)
            if known_workflow(workflow, automation.engine.workflows):
                metrics.WORKFLOW_TIMER_LAG.labels(workflow).observe(lag)
            if fx.changed:
                touched[timer.user_key] = state
            self.rt.applier_for(state.tenant_id).apply(
                outbox, partition, timer.user_key, state, fx, now
            )
        for key, state in touched.items():
            outbox.put(self.users, partition, key, state.encode())
        return outbox

    async def reject(self, partition: int, raw: bytes, exc: Exception) -> None:
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
        outbox.put(self.timers, partition, raw, None, AFTER_STATE)
        headers = dead_letter_headers(
            ENGINE_ERROR, reason, f"timer:{timer.workflow}", partition, -1
        )
        outbox.send(self.rt.config.topics.dlq, user.encode(), orjson.dumps(doc), headers)
        await flush(self.rt.writer, outbox)
        metrics.TIMERS_FIRED.inc()
        metrics.DEAD_LETTERS.labels(ENGINE_ERROR).inc()

    async def tick(self) -> None:
        """Fire what is due on every owned partition, once the worker is settled."""
        if not self.rt.settled() or not self.rt.suppression_list.ready.is_set():
            return
        async with STATE_LOCK:
            if not self.rt.settled():
                return
            started = time.perf_counter()
            now = int(time.time() * 1000)
            for partition in self.users.active_partitions():
                try:
                    await self.fire_partition(partition, now)
                except Fenced as exc:  # its new owner fires them (exactly_once)
                    logger.info("timers of partition %d left to its new owner: %s", partition, exc)
            metrics.TIMER_TICK.observe(time.perf_counter() - started)


def register(rt: Runtime) -> None:
    rt.app.timer(interval=TICK_SECONDS)(TimerRunner(rt).tick)
