"""The workflow engine: what an event or a due timer does to a user's enrollments.

Pure: it takes the user's state, the event or timer and ``now`` (epoch ms), changes the
state in place and returns the effects (sends to make, timers to set or clear). The
agent shell publishes those effects with the state, so a replay after a crash computes
the same send ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from mailstream.core.events import IDENTIFY, Event
from mailstream.core.user_state import UserState
from mailstream.webhooks_out.step import WebhookIntent
from mailstream.workflows import digest
from mailstream.workflows.field_changes import ChangeWatch
from mailstream.workflows.segments import apply_change
from mailstream.workflows.spec import END, EXIT_INDEX, Step, Workflow

WAIT_TIMER = "w"
INACTIVITY_TIMER = "i"
# A run that executes more steps than this without waiting is a loop in the workflow.
MAX_STEPS_PER_RUN = 100


@dataclass(frozen=True, slots=True)
class SendIntent:
    """A send step reached: what to render and send, with its deterministic id."""

    send_id: str
    workflow: str
    enrollment_id: str
    step: int
    template: str
    category: str
    priority: str
    context: dict[str, Any]
    event: dict[str, Any]
    event_at: int | None = None  # the triggering event's time, for a send made right away


@dataclass(frozen=True, slots=True)
class TimerOp:
    due: int
    kind: str  # WAIT_TIMER, INACTIVITY_TIMER or mailstream.workflows.send_policy.DEFER_TIMER
    workflow: str  # for a deferred send: its send id


@dataclass(slots=True)
class Effects:
    sends: list[SendIntent] = field(default_factory=list)
    timers_add: list[TimerOp] = field(default_factory=list)
    timers_del: list[TimerOp] = field(default_factory=list)
    counts: list[tuple[str, str]] = field(default_factory=list)  # (workflow, what)
    # (workflow, enrollment id) of enrollments that reached a goal: their held sends go
    goal_exits: list[tuple[str, str]] = field(default_factory=list)
    # (category, decision, reason) of each send decision the policy made
    decisions: list[tuple[str, str, str]] = field(default_factory=list)
    webhooks: list[WebhookIntent] = field(default_factory=list)
    changed: bool = False

    def count(self, workflow: str, what: str) -> None:
        self.counts.append((workflow, what))


def send_id(user: UserState, workflow: str, enrollment_id: str, seq: int) -> str:
    """Same user, workflow, enrollment and step execution: the same id, on any replay."""
    raw = "\x1f".join((user.tenant_id, user.user_id, workflow, enrollment_id, str(seq)))
    return blake2b(raw.encode(), digest_size=16).hexdigest()


def user_scope(user: UserState) -> dict[str, Any]:
    """What conditions see under ``user.``: traits, consent, event counts, last activity."""
    scope = dict(user.traits)
    scope["consent"] = user.consent
    scope["events"] = user.events
    scope["last_activity"] = user.last_activity
    scope["segments"] = user.segments
    return scope


class Engine:
    """Runs the configured workflows for one user at a time."""

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        self.workflows = {w.name: w for w in workflows}
        self.by_trigger: dict[str, list[Workflow]] = {}
        self.inactivity: list[Workflow] = []
        for w in self.workflows.values():
            if w.trigger_event is not None:
                self.by_trigger.setdefault(w.trigger_event, []).append(w)
            else:
                self.inactivity.append(w)
        self.changes = ChangeWatch(w.changed for w in self.workflows.values() if w.changed)

    # ---- entry points ----------------------------------------------------------------

    def on_event(self, user: UserState, event: Event, now: int) -> Effects:
        """An event for this user (already folded into its state)."""
        fx = Effects()
        if not self.workflows and not user.enrollments:
            return fx
        payload = event.payload
        for name in list(user.enrollments):
            workflow = self.workflows.get(name)
            if workflow is None or user.enrollments[name]["step"] >= len(workflow.steps):
                # removed from the config, or cut short under this enrollment: drop it
                self._clear_timer(user.enrollments[name], name, fx)
                self._finish(user, name, fx, "dropped")
                continue
            self._see_event(user, workflow, event, payload, now, fx)
        # Before any trigger decides: the last values seen move on whether or not one fires.
        seen = self.changes.observe(user.changes, event.event_type, payload)
        for workflow in self.by_trigger.get(event.event_type, ()):
            scope = {"event": payload, "user": user_scope(user), "context": {}}
            if workflow.changed is not None and not workflow.changed.fires(seen):
                continue
            if not workflow.trigger(scope):
                continue
            enrollment = user.enrollments.get(workflow.name)
            if enrollment is not None:
                # The trigger again while enrolled (a second cart_updated during the
                # wait): the enrollment carries on with the latest payload as its
                # context, so the reminder shows the cart as it is now.
                if enrollment["ctx"] != payload:
                    enrollment["ctx"] = dict(payload)
                    fx.changed = True
                    fx.count(workflow.name, "context_refreshed")
            elif self._may_enter(user, workflow, now):
                self._enroll(user, workflow, event.event_id, dict(payload), payload, now, fx)
        # Last, so a digest also collects the event that enrolled the user or brought the
        # enrollment to the digest step.
        self._collect_digests(user, event, now, fx)
        if event.event_type != IDENTIFY:
            self._arm_inactivity(user, fx)
        return fx

    def on_timer(self, user: UserState, kind: str, name: str, due: int, now: int) -> Effects:
        """A timer of this user came due. Stale timers (the state moved on) do nothing."""
        fx = Effects()
        workflow = self.workflows.get(name)
        if workflow is None:
            return fx
        if kind == INACTIVITY_TIMER:
            self._inactivity_due(user, workflow, due, now, fx)
            return fx
        enrollment = user.enrollments.get(name)
        if enrollment is None or enrollment.get("due") != due:
            return fx
        if enrollment["step"] >= len(workflow.steps):
            self._finish(user, name, fx, "dropped")
            return fx
        step = workflow.steps[enrollment["step"]]
        enrollment["due"] = None
        fx.changed = True
        if step.kind == "wait_for":
            fx.count(name, "timed_out")
            self._run(user, workflow, step.on_timeout, {}, now, fx)
        elif step.kind == "digest":
            self._send_digest(user, workflow, step, now, fx)
        else:
            self._run(user, workflow, step.next, {}, now, fx)
        return fx

    # ---- the steps -------------------------------------------------------------------

    def _see_event(
        self,
        user: UserState,
        workflow: Workflow,
        event: Event,
        payload: dict[str, Any],
        now: int,
        fx: Effects,
    ) -> None:
        enrollment = user.enrollments[workflow.name]
        scope = {"event": payload, "user": user_scope(user), "context": enrollment["ctx"]}
        for goal_event, goal in workflow.goals:
            if event.event_type == goal_event and goal(scope):
                self._clear_timer(enrollment, workflow.name, fx)
                self._finish(user, workflow.name, fx, "exited_goal")
                return
        step = workflow.steps[enrollment["step"]]
        if step.kind == "wait_for" and event.event_type == step.event and step.condition(scope):
            self._clear_timer(enrollment, workflow.name, fx)
            fx.count(workflow.name, "wait_for_matched")
            self._run(user, workflow, step.on_event, payload, now, fx)

    def reaches_goal(
        self, user: UserState, name: str, event: Event, context: dict[str, Any]
    ) -> bool:
        """Whether ``event`` is a goal of workflow ``name`` for an enrollment with ``context``."""
        workflow = self.workflows.get(name)
        if workflow is None:
            return False
        scope = {"event": event.payload, "user": user_scope(user), "context": context}
        return any(
            event.event_type == goal_event and goal(scope) for goal_event, goal in workflow.goals
        )

    def _may_enter(self, user: UserState, workflow: Workflow, now: int) -> bool:
        if workflow.name in user.enrollments:
            return False
        last = user.entries.get(workflow.name)
        if last is None or workflow.entry == "always":
            return True
        if workflow.entry == "once_per":
            return now - last >= workflow.once_per_ms
        return False

    def _enroll(
        self,
        user: UserState,
        workflow: Workflow,
        enrollment_id: str,
        context: dict[str, Any],
        payload: Mapping[str, Any],
        now: int,
        fx: Effects,
    ) -> None:
        user.enrollments[workflow.name] = {
            "id": enrollment_id,
            "step": 0,
            "seq": 0,
            "entered": now,
            "due": None,
            "ctx": context,
        }
        user.entries[workflow.name] = now
        fx.changed = True
        fx.count(workflow.name, "enrolled")
        self._run(user, workflow, 0, dict(payload), now, fx)

    def _run(
        self,
        user: UserState,
        workflow: Workflow,
        index: int,
        payload: dict[str, Any],
        now: int,
        fx: Effects,
    ) -> None:
        """Execute steps from ``index`` until a wait, an exit or the end."""
        name = workflow.name
        enrollment = user.enrollments[name]
        fx.changed = True
        sends_before, webhooks_before = len(fx.sends), len(fx.webhooks)
        for _ in range(MAX_STEPS_PER_RUN):
            if index == END:
                self._finish(user, name, fx, "completed")
                return
            if index == EXIT_INDEX:
                self._finish(user, name, fx, "exited")
                return
            step: Step = workflow.steps[index]
            enrollment["step"] = index
            enrollment["seq"] += 1
            if step.kind == "send":
                fx.sends.append(
                    SendIntent(
                        send_id=send_id(user, name, enrollment["id"], enrollment["seq"]),
                        workflow=name,
                        enrollment_id=enrollment["id"],
                        step=index,
                        template=step.template,
                        category=step.category,
                        priority=step.priority,
                        context=enrollment["ctx"],
                        event=payload,
                    )
                )
                index = step.next
            elif step.kind == "digest":
                enrollment.pop(digest.ITEMS, None)  # its timer starts with the first item
                return
            elif step.kind == "segment":
                apply_change(user.segments, step.rule, now)
                index = step.next
            elif step.kind == "webhook":
                assert step.webhook is not None
                fx.webhooks.append(
                    WebhookIntent(
                        # the send id's recipe: one id per step execution, on any replay
                        webhook_id=send_id(user, name, enrollment["id"], enrollment["seq"]),
                        workflow=name,
                        enrollment_id=enrollment["id"],
                        step=index,
                        action=step.webhook,
                        context=enrollment["ctx"],
                        event=payload,
                    )
                )
                index = step.next
            elif step.kind in ("wait", "wait_for"):
                due = now + step.duration_ms
                enrollment["due"] = due
                fx.timers_add.append(TimerOp(due, WAIT_TIMER, name))
                return
            elif step.kind == "branch":
                scope = {"event": payload, "user": user_scope(user), "context": enrollment["ctx"]}
                index = step.then if step.condition(scope) else step.otherwise
            elif step.kind == "update_user":
                for key, value in step.set.items():
                    user.traits[key] = value
                for key, amount in step.increment.items():
                    current: Any = user.traits.get(key)
                    numeric = isinstance(current, int | float) and not isinstance(current, bool)
                    user.traits[key] = (current if numeric else 0) + amount
                index = step.next
            else:  # exit
                index = EXIT_INDEX
        # A loop without a wait: a mistake in the workflow, so none of the sends (or
        # webhooks) it made in this run go out (it would otherwise mail the user up to 100 times).
        del fx.sends[sends_before:]
        del fx.webhooks[webhooks_before:]
        fx.count(name, "step_limit")
        self._finish(user, name, fx, "exited")

    # ---- digests ---------------------------------------------------------------------

    def _collect_digests(self, user: UserState, event: Event, now: int, fx: Effects) -> None:
        """Add the event to each digest waiting for it; send those it fills."""
        for name, enrollment in list(user.enrollments.items()):
            workflow = self.workflows.get(name)
            if workflow is None or enrollment["step"] >= len(workflow.steps):
                continue
            step = workflow.steps[enrollment["step"]]
            if step.kind != "digest":
                continue
            scope = {"event": event.payload, "user": user_scope(user), "context": enrollment["ctx"]}
            if not digest.collects(step.rule, event, scope):
                continue
            items = enrollment.setdefault(digest.ITEMS, [])
            if not digest.add(step.rule, items, event):
                continue  # a replay of an event already collected
            fx.changed = True
            fx.count(name, "digest_collected")
            if len(items) >= step.rule.max_items:
                self._clear_timer(enrollment, name, fx)
                self._send_digest(user, workflow, step, now, fx)
            elif enrollment.get("due") is None:  # the first item opens the window
                due = now + step.rule.window_ms
                enrollment["due"] = due
                fx.timers_add.append(TimerOp(due, WAIT_TIMER, name))

    def _send_digest(
        self, user: UserState, workflow: Workflow, step: Step, now: int, fx: Effects
    ) -> None:
        """One send listing the items collected (none: no send), then on to the next step."""
        enrollment = user.enrollments[workflow.name]
        items = enrollment.pop(digest.ITEMS, [])
        if items:
            fx.sends.append(
                SendIntent(
                    send_id=send_id(user, workflow.name, enrollment["id"], enrollment["seq"]),
                    workflow=workflow.name,
                    enrollment_id=enrollment["id"],
                    step=step.index,
                    template=step.template,
                    category=step.category,
                    priority=step.priority,
                    context=enrollment["ctx"],
                    event=digest.template_view(items),
                )
            )
            fx.count(workflow.name, "digest_sent")
        self._run(user, workflow, step.next, {}, now, fx)

    def _finish(self, user: UserState, name: str, fx: Effects, outcome: str) -> None:
        enrollment = user.enrollments.pop(name, None)
        if outcome == "exited_goal" and enrollment is not None:
            fx.goal_exits.append((name, enrollment["id"]))
        fx.changed = True
        fx.count(name, outcome)

    @staticmethod
    def _clear_timer(enrollment: dict[str, Any], name: str, fx: Effects) -> None:
        due = enrollment.get("due")
        if due is not None:
            fx.timers_del.append(TimerOp(due, WAIT_TIMER, name))
            enrollment["due"] = None

    # ---- inactivity ------------------------------------------------------------------

    def _arm_inactivity(self, user: UserState, fx: Effects) -> None:
        """Make sure each inactivity workflow has a pending check for this user.

        The check is not moved on every event: when it comes due it looks at the user's
        last activity and re-arms itself if the user was active since (one write per
        period instead of one per event).
        """
        if user.last_activity is None:
            return
        for workflow in self.inactivity:
            if workflow.name in user.inactive_due or workflow.inactive_for_ms is None:
                continue
            if workflow.entry == "once" and workflow.name in user.entries:
                continue
            due = user.last_activity + workflow.inactive_for_ms
            user.inactive_due[workflow.name] = due
            fx.timers_add.append(TimerOp(due, INACTIVITY_TIMER, workflow.name))
            fx.changed = True

    def _inactivity_due(
        self, user: UserState, workflow: Workflow, due: int, now: int, fx: Effects
    ) -> None:
        name = workflow.name
        if user.inactive_due.get(name) != due or workflow.inactive_for_ms is None:
            return
        del user.inactive_due[name]
        fx.changed = True
        if user.last_activity is None:
            return
        real_due = user.last_activity + workflow.inactive_for_ms
        if real_due > now:
            user.inactive_due[name] = real_due
            fx.timers_add.append(TimerOp(real_due, INACTIVITY_TIMER, name))
            return
        if self._may_enter(user, workflow, now):
            episode = f"inactive:{user.last_activity}"
            context = {"last_activity": user.last_activity}
            self._enroll(user, workflow, episode, context, {}, now, fx)
            return
        # Not now: still enrolled, or inside once_per. Look again when that may change;
        # after `once`, never (the next event re-arms nothing either).
        if workflow.entry == "once" and name in user.entries:
            return
        if name in user.enrollments:
            retry = now + workflow.inactive_for_ms
        else:  # once_per: the earliest moment the user may enter again
            retry = user.entries[name] + workflow.once_per_ms
        user.inactive_due[name] = retry
        fx.timers_add.append(TimerOp(retry, INACTIVITY_TIMER, name))
