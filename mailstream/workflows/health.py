"""Workflow health: per-workflow figures over a recent window, a score from 0 to 100, a
category and recommendations an operator can act on.

Pure: the caller passes metric samples and ``now`` in. Each worker turns its own samples
into per-workflow figures (``mailstream.workflows.health_window.local_figures``); the
figures of several workers add up with ``mailstream.web.figures.add_up``; ``report``
scores the sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailstream.workflows.health_labels import RENDER_REASONS, UNDEFINED_VARIABLE
from mailstream.workflows.health_window import quantile


@dataclass(frozen=True, slots=True)
class TemplateFailure:
    template: str
    renders: float  # of this template by this workflow, ok or not
    failed: float
    reason: str  # the most frequent reason
    variable: str  # its most frequent missing variable, for undefined_variable


@dataclass(frozen=True, slots=True)
class WorkflowFigures:
    """What health is judged on, for one workflow over the window (all workers)."""

    enrolled: float = 0.0
    enrollments_per_min: float = 0.0
    completed: float = 0.0
    exited_goal: float = 0.0
    exited: float = 0.0
    renders: float = 0.0  # sends the policy let through, each rendered once
    render_failures: tuple[TemplateFailure, ...] = ()
    sent: float = 0.0
    retried: float = 0.0
    refused: float = 0.0  # a permanent provider error
    gave_up: float = 0.0  # retries exhausted
    unknown: float = 0.0  # a worker died during the provider call (marketing: not resent)
    event_to_send_p50: float | None = None
    event_to_send_p99: float | None = None
    timer_lag_p50: float | None = None
    timer_lag_p99: float | None = None
    timers_fired: float = 0.0

    @property
    def failed_renders(self) -> float:
        return sum(t.failed for t in self.render_failures)

    @property
    def dead_letters(self) -> dict[str, float]:
        """Dead letters this workflow caused, by the reason code they carry."""
        found = {
            "template_error": self.failed_renders,
            "delivery_failed": self.refused,
            "delivery_exhausted": self.gave_up,
            "unknown_outcome": self.unknown,
        }
        return {k: v for k, v in found.items() if v > 0}

    @property
    def provider_calls(self) -> float:
        return self.sent + self.retried + self.refused + self.gave_up

    @property
    def has_data(self) -> bool:
        return any(
            v > 0
            for v in (
                self.enrolled,
                self.completed,
                self.exited_goal,
                self.exited,
                self.renders,
                self.provider_calls,
                self.unknown,
                self.timers_fired,
            )
        )

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> WorkflowFigures:
        """From the (added up) figures of ``local_figures``."""
        failures = []
        renders = 0.0
        for template, t in sorted(doc.get("templates", {}).items()):
            reasons: dict[str, dict[str, float]] = t.get("failed", {})
            failed = sum(sum(v.values()) for v in reasons.values())
            renders += t.get("ok", 0.0) + failed
            if failed > 0:
                reason = max(sorted(reasons), key=lambda r: sum(reasons[r].values()))
                variables = reasons[reason]
                variable = max(sorted(variables), key=lambda v: variables[v])
                failures.append(
                    TemplateFailure(template, t.get("ok", 0.0) + failed, failed, reason, variable)
                )
        sends = doc.get("sends", {})
        lag = doc.get("timer_lag", {})
        e2s = doc.get("event_to_send", {})
        return cls(
            enrolled=doc.get("enrolled", 0.0),
            enrollments_per_min=doc.get("enrollments_per_min", 0.0),
            completed=doc.get("completed", 0.0),
            exited_goal=doc.get("exited_goal", 0.0),
            exited=doc.get("exited", 0.0),
            renders=renders,
            render_failures=tuple(failures),
            sent=sends.get("sent", 0.0),
            retried=sends.get("retry", 0.0),
            refused=sends.get("permanent", 0.0),
            gave_up=sends.get("exhausted", 0.0),
            unknown=sends.get("unknown", 0.0),
            event_to_send_p50=quantile(e2s, 0.5),
            event_to_send_p99=quantile(e2s, 0.99),
            timer_lag_p50=quantile(lag, 0.5),
            timer_lag_p99=quantile(lag, 0.99),
            timers_fired=lag.get("+Inf", 0.0),
        )


EXCELLENT, GOOD, ACCEPTABLE, POOR = 90, 75, 60, 40
NO_DATA = "no data"

DLQ_WARN = 0.01  # dead letters over 1 % of sends: 5 points per percent, up to 80
DLQ_POINTS_PER_PCT, DLQ_MAX_POINTS = 5.0, 80.0
SUCCESS_WARN = 0.95  # provider calls accepted under 95 %: 2 points per percent, up to 40
SUCCESS_POINTS_PER_PCT, SUCCESS_MAX_POINTS = 2.0, 40.0
TIMER_LAG_STEPS = (1.0, 5.0, 30.0)  # p99 seconds; 10 points for each step passed
EVENT_TO_SEND_STEPS = (10.0, 60.0, 300.0)  # p99 seconds; 10 points for each step passed
STEP_POINTS = 10.0


@dataclass(frozen=True, slots=True)
class Health:
    score: int | None  # None: nothing happened in the window, so nothing to judge
    category: str
    recommendations: list[str] = field(default_factory=list)


def category(score: int) -> str:
    if score >= EXCELLENT:
        return "excellent"
    if score >= GOOD:
        return "good"
    if score >= ACCEPTABLE:
        return "acceptable"
    if score >= POOR:
        return "poor"
    return "critical"


def pct(share: float) -> str:
    """A share as a percentage to read: '3 %', '2.5 %', '0.4 %'."""
    value = 100.0 * share
    if value < 10 and round(value, 1) != round(value):
        return f"{value:.1f} %"
    return f"{value:.0f} %"


def seconds(value: float) -> str:
    return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"


def assess(f: WorkflowFigures) -> Health:
    """The score (100 less a penalty per problem found), its category, and what to do:
    every penalty comes with a recommendation; a failing template is named even when its
    share is too small to cost points."""
    if not f.has_data:
        return Health(None, NO_DATA, [])
    penalty = 0.0
    advice: list[str] = []
    for t in sorted(f.render_failures, key=lambda t: (-t.failed / t.renders, t.template)):
        what = RENDER_REASONS.get(t.reason, t.reason)
        if t.reason == UNDEFINED_VARIABLE:
            what += f" `{t.variable}`"
        advice.append(
            f"template `{t.template}` failed {pct(t.failed / t.renders)} of renders: {what}"
        )
    if f.renders > 0:
        lost = f.dead_letters
        share = sum(lost.values()) / f.renders
        if share > DLQ_WARN:
            penalty += min(DLQ_MAX_POINTS, DLQ_POINTS_PER_PCT * 100 * share)
            top = max(sorted(lost), key=lambda r: lost[r])
            advice.append(
                f"DLQ rate {pct(share)}: check the dead-letter topic for reason `{top}`"
                " (`mailstream dlq`)"
            )
    calls = f.provider_calls
    if calls > 0:
        rate = f.sent / calls
        if rate < SUCCESS_WARN:
            penalty += min(SUCCESS_MAX_POINTS, SUCCESS_POINTS_PER_PCT * 100 * (SUCCESS_WARN - rate))
            advice.append(
                f"send success rate {pct(rate)}: check provider errors ({f.retried:.0f} retried,"
                f" {f.refused + f.gave_up:.0f} failed; see mailstream_sends_total)"
            )
    if f.timer_lag_p99 is not None and f.timer_lag_p99 > TIMER_LAG_STEPS[0]:
        penalty += STEP_POINTS * sum(f.timer_lag_p99 > s for s in TIMER_LAG_STEPS)
        advice.append(
            f"timer lag p99 {seconds(f.timer_lag_p99)} (over {seconds(TIMER_LAG_STEPS[0])}):"
            " add partitions or workers"
        )
    if f.event_to_send_p99 is not None and f.event_to_send_p99 > EVENT_TO_SEND_STEPS[0]:
        penalty += STEP_POINTS * sum(f.event_to_send_p99 > s for s in EVENT_TO_SEND_STEPS)
        advice.append(
            f"event to send p99 {seconds(f.event_to_send_p99)} (over"
            f" {seconds(EVENT_TO_SEND_STEPS[0])}): check the consumer lag on the dashboard"
            " and the provider rate limit (mailstream_pacer_waits_total)"
        )
    score = max(0, min(100, round(100 - penalty)))
    return Health(score, category(score), advice)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def describe(f: WorkflowFigures) -> dict[str, Any]:
    """The figures as shown on the dashboard and in the JSON."""
    calls = f.provider_calls
    lost = f.dead_letters
    return {
        "enrolled": f.enrolled,
        "enrollments_per_min": round(f.enrollments_per_min, 2),
        "exited_goal": f.exited_goal,
        "completed": f.completed,
        "exited": f.exited,
        "renders": f.renders,
        "render_failures": [
            {
                "template": t.template,
                "renders": t.renders,
                "failed": t.failed,
                "share": round(t.failed / t.renders, 4),
                "reason": t.reason,
                "variable": t.variable or None,
            }
            for t in f.render_failures
        ],
        "sent": f.sent,
        "retried": f.retried,
        "failed": f.refused + f.gave_up,
        "send_success_rate": round(f.sent / calls, 4) if calls else None,
        "dead_letters": sum(lost.values(), 0.0),
        "dead_letters_by_reason": lost,
        "dlq_rate": round(sum(lost.values()) / f.renders, 4) if f.renders else None,
        "event_to_send_p50_s": _rounded(f.event_to_send_p50),
        "event_to_send_p99_s": _rounded(f.event_to_send_p99),
        "timer_lag_p50_s": _rounded(f.timer_lag_p50),
        "timer_lag_p99_s": _rounded(f.timer_lag_p99),
        "timers_fired": f.timers_fired,
    }


def report(figures: Mapping[str, Mapping[str, Any]], workflows: Iterable[str]) -> dict[str, Any]:
    """Score each configured workflow from its figures added up over the workers; one
    with no figures has no data."""
    out: dict[str, Any] = {}
    for name in sorted(workflows):
        f = WorkflowFigures.from_doc(figures.get(name, {}))
        health = assess(f)
        out[name] = {
            "score": health.score,
            "category": health.category,
            "recommendations": health.recommendations,
            "figures": describe(f),
        }
    return out
