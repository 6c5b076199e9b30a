"""What an event or a due timer does for a user: the workflow engine, then the send policy."""

from __future__ import annotations

import dataclasses

from mailstream.core.events import Event
from mailstream.core.user_state import UserState
from mailstream.workflows.engine import Effects, Engine
from mailstream.workflows.send_policy import DEFER_TIMER, Policy


class Automation:
    """Runs the workflows for a user and passes every send they make through the policy."""

    def __init__(self, engine: Engine, policy: Policy) -> None:
        self.engine = engine
        self.policy = policy

    def on_event(self, user: UserState, event: Event, now: int) -> Effects:
        fx = self.engine.on_event(user, event, now)
        fx.sends = [dataclasses.replace(s, event_at=event.timestamp) for s in fx.sends]
        # A held send outlives its enrollment when it was the last step; its workflow's
        # goal still cancels it (a reminder for a cart bought during the night).
        for held in user.deferred.values():
            exit_ = (held["workflow"], held["enrollment_id"])
            if exit_ not in fx.goal_exits and self.engine.reaches_goal(
                user, held["workflow"], event, held["context"]
            ):
                fx.goal_exits.append(exit_)
        self.policy.review(user, fx, now)
        return fx

    def on_timer(self, user: UserState, kind: str, name: str, due: int, now: int) -> Effects:
        if kind == DEFER_TIMER:
            return self.policy.on_deferred(user, name, due, now)
        fx = self.engine.on_timer(user, kind, name, due, now)
        self.policy.review(user, fx, now)
        return fx
