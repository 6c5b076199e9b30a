"""Workflow health: the score, category and recommendations from given figures, and the
arithmetic that turns metric samples of several workers into those figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailstream.observability.metrics import LabelCap
from mailstream.web.figures import add_up
from mailstream.web.pages import render_page
from mailstream.workflows.health import (
    NO_DATA,
    TemplateFailure,
    WorkflowFigures,
    assess,
    category,
    pct,
    report,
)
from mailstream.workflows.health_labels import (
    known_workflow,
    render_failure,
    timer_workflow,
    undefined_name,
)
from mailstream.workflows.health_window import Window, flat, local_figures, quantile
from mailstream.workflows.send_policy import DEFER_TIMER
from mailstream.workflows.template_files import TemplateError
from mailstream.workflows.templates import Templates

HEALTHY = WorkflowFigures(
    enrolled=120,
    enrollments_per_min=8,
    exited_goal=30,
    renders=100,
    sent=100,
    event_to_send_p50=0.2,
    event_to_send_p99=0.8,
    timer_lag_p50=0.1,
    timer_lag_p99=0.3,
    timers_fired=90,
)


def with_(**changes: Any) -> WorkflowFigures:
    fields = {name: getattr(HEALTHY, name) for name in WorkflowFigures.__slots__}  # type: ignore[attr-defined]
    return WorkflowFigures(**(fields | changes))


TEMPLATE_RULE = "template `cart_reminder` failed 3 % of renders: missing variable `items`"


@pytest.mark.parametrize(
    ("figures", "score", "category_", "advice"),
    [
        pytest.param(HEALTHY, 100, "excellent", [], id="healthy"),
        pytest.param(
            WorkflowFigures(enrolled=10, enrollments_per_min=1),
            100,
            "excellent",
            [],
            id="enrolled, all still waiting: nothing wrong yet",
        ),
        pytest.param(WorkflowFigures(), None, NO_DATA, [], id="no traffic: not scored, no advice"),
        pytest.param(
            with_(timer_lag_p99=2.5),
            90,
            "excellent",
            ["timer lag p99 2.5 s (over 1 s): add partitions or workers"],
            id="timer lag over 1 s",
        ),
        pytest.param(
            with_(timer_lag_p99=7.0),
            80,
            "good",
            ["timer lag p99 7 s (over 1 s): add partitions or workers"],
            id="timer lag over 5 s",
        ),
        pytest.param(
            with_(timer_lag_p99=45.0),
            70,
            "acceptable",
            ["timer lag p99 45 s (over 1 s): add partitions or workers"],
            id="timer lag over 30 s",
        ),
        pytest.param(
            with_(
                sent=97,
                render_failures=(
                    TemplateFailure("cart_reminder", 100, 3, "undefined_variable", "items"),
                ),
            ),
            85,
            "good",
            [
                TEMPLATE_RULE,
                "DLQ rate 3 %: check the dead-letter topic for reason `template_error`"
                " (`mailstream dlq`)",
            ],
            id="failing template",
        ),
        pytest.param(
            with_(
                renders=200,
                sent=199,
                render_failures=(TemplateFailure("welcome", 200, 1, "sandbox", ""),),
            ),
            100,
            "excellent",
            ["template `welcome` failed 0.5 % of renders: unsafe access blocked by the sandbox"],
            id="a rare template failure is named but costs nothing",
        ),
        pytest.param(
            with_(
                renders=50,
                sent=0,
                render_failures=(TemplateFailure("receipt", 50, 50, "invalid_template", ""),),
            ),
            20,
            "critical",
            [
                "template `receipt` failed 100 % of renders: the template is missing or does"
                " not compile (run `mailstream check`)",
                "DLQ rate 100 %: check the dead-letter topic for reason `template_error`"
                " (`mailstream dlq`)",
            ],
            id="every render fails",
        ),
        pytest.param(
            with_(sent=82, retried=15, refused=3),
            59,
            "poor",
            [
                "DLQ rate 3 %: check the dead-letter topic for reason `delivery_failed`"
                " (`mailstream dlq`)",
                "send success rate 82 %: check provider errors (15 retried, 3 failed; see"
                " mailstream_sends_total)",
            ],
            id="low send success rate",
        ),
        pytest.param(
            with_(sent=96, refused=1, gave_up=3),
            80,
            "good",
            [
                "DLQ rate 4 %: check the dead-letter topic for reason `delivery_exhausted`"
                " (`mailstream dlq`)"
            ],
            id="high DLQ rate",
        ),
        pytest.param(
            with_(event_to_send_p99=75.0),
            80,
            "good",
            [
                "event to send p99 75 s (over 10 s): check the consumer lag on the dashboard"
                " and the provider rate limit (mailstream_pacer_waits_total)"
            ],
            id="slow first send",
        ),
        pytest.param(
            with_(sent=10, retried=90, gave_up=60, renders=70, timer_lag_p99=100.0),
            0,
            "critical",
            [
                "DLQ rate 86 %: check the dead-letter topic for reason `delivery_exhausted`"
                " (`mailstream dlq`)",
                "send success rate 6.2 %: check provider errors (90 retried, 60 failed; see"
                " mailstream_sends_total)",
                "timer lag p99 100 s (over 1 s): add partitions or workers",
            ],
            id="everything wrong: the score stops at 0",
        ),
    ],
)
def test_the_score_category_and_advice(
    figures: WorkflowFigures, score: int | None, category_: str, advice: list[str]
) -> None:
    health = assess(figures)
    assert (health.score, health.category, health.recommendations) == (score, category_, advice)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (100, "excellent"),
        (90, "excellent"),
        (89, "good"),
        (75, "good"),
        (74, "acceptable"),
        (60, "acceptable"),
        (59, "poor"),
        (40, "poor"),
        (39, "critical"),
        (0, "critical"),
    ],
)
def test_categories(score: int, expected: str) -> None:
    assert category(score) == expected


@pytest.mark.parametrize(
    ("share", "text"),
    [(0.03, "3 %"), (0.025, "2.5 %"), (0.004, "0.4 %"), (0.8234, "82 %"), (1, "100 %")],
)
def test_percentages_read_well(share: float, text: str) -> None:
    assert pct(share) == text


# ---- render failures, by template and reason -----------------------------------------


def _failure(tmp_path: Path, body: str, **data: Any) -> TemplateError:
    (tmp_path / "t.j2").write_text(
        "{% block subject %}Hi{% endblock %}{% block text %}" + body + "{% endblock %}"
        "{% block html %}x{% endblock %}"
    )
    with pytest.raises(TemplateError) as caught:
        Templates(tmp_path).render("t", user={"email": "a@example.com"}, **data)
    return caught.value


@pytest.mark.parametrize(
    ("body", "data", "expected"),
    [
        ("{% for i in context.items %}{{ i }}{% endfor %}", {}, ("undefined_variable", "items")),
        ("{{ user.first_name }}", {}, ("undefined_variable", "first_name")),
        ("{{ nowhere }}", {}, ("undefined_variable", "nowhere")),
        ("{{ event.cart.total }}", {"event": {"cart": {}}}, ("undefined_variable", "total")),
        ("{{ event.lines[3] }}", {"event": {"lines": []}}, ("undefined_variable", "[3]")),
        ("{{ 1 / 0 }}", {}, ("runtime_error", "")),
        ("{{ ().__class__ }}", {}, ("sandbox", "")),
        ("{% if %}", {}, ("invalid_template", "")),
    ],
)
def test_render_failures_are_told_apart(
    tmp_path: Path, body: str, data: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert render_failure(_failure(tmp_path, body, **data)) == expected


def test_an_empty_subject_is_its_own_reason(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text(
        "{% block subject %} {% endblock %}{% block text %}x{% endblock %}"
        "{% block html %}x{% endblock %}"
    )
    with pytest.raises(TemplateError) as caught:
        Templates(tmp_path).render("t", user={})
    assert render_failure(caught.value) == ("bad_subject", "")
    with pytest.raises(TemplateError) as caught:
        Templates(tmp_path).render("absent", user={})
    assert render_failure(caught.value) == ("invalid_template", "")


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("'items' is undefined", "items"),
        ("'dict object' has no attribute 'items'", "items"),
        ("'list object' has no element 3", "[3]"),
        ("'x" + "y" * 100 + "' is undefined", "x" + "y" * 36 + "..."),
        ("'bad name<script>' is undefined", "bad?name?script?"),
        ("something else entirely", "?"),
    ],
)
def test_missing_names_are_bounded(message: str, name: str) -> None:
    assert undefined_name(message) == name


def test_the_number_of_missing_names_is_capped() -> None:
    cap = LabelCap(2)
    assert [cap(v) for v in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cart", "cart"), ("removed", None), (None, None), (3, None)],
)
def test_only_configured_workflows_label_send_outcomes(name: Any, expected: str | None) -> None:
    assert known_workflow(name, {"cart": object()}) == expected


@pytest.mark.parametrize(
    ("kind", "name", "deferred", "expected"),
    [
        ("w", "cart", {}, "cart"),
        ("i", "winback", {}, "winback"),
        (DEFER_TIMER, "send-1", {"send-1": {"workflow": "cart"}}, "cart"),
        (DEFER_TIMER, "send-2", {"send-1": {"workflow": "cart"}}, ""),  # stale: gone
    ],
)
def test_a_timer_belongs_to_a_workflow(
    kind: str, name: str, deferred: dict[str, Any], expected: str
) -> None:
    assert timer_workflow(kind, name, deferred) == expected


# ---- from samples to figures -----------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ({}, 0.5, None),
        ({"0.1": 0, "1.0": 0, "+Inf": 0}, 0.5, None),
        ({"0.1": 10, "1.0": 10, "+Inf": 10}, 0.5, 0.05),  # within the first bucket
        ({"0.1": 0, "1.0": 10, "+Inf": 10}, 0.5, 0.55),
        ({"0.1": 50, "1.0": 100, "+Inf": 100}, 0.99, 0.982),
        ({"0.1": 0, "1.0": 0, "+Inf": 4}, 0.99, 1.0),  # past the last bound: that bound
    ],
)
def test_quantiles_from_buckets(
    buckets: dict[str, float], q: float, expected: float | None
) -> None:
    found = quantile(buckets, q)
    assert found == expected if expected is None else found == pytest.approx(expected)


def _samples(enrolled: float, ok: float, failed: float, sent: float, lag: list[float]) -> Any:
    les = ("0.5", "1.0", "+Inf")
    return {
        "mailstream_workflow_transitions_total": [
            ({"workflow": "cart", "transition": "enrolled"}, enrolled),
            ({"workflow": "cart", "transition": "context_refreshed"}, 7.0),
        ],
        "mailstream_template_renders_total": [
            ({"workflow": "cart", "template": "cart_reminder", "result": "ok", "variable": ""}, ok),
            (
                {
                    "workflow": "cart",
                    "template": "cart_reminder",
                    "result": "undefined_variable",
                    "variable": "items",
                },
                failed,
            ),
        ],
        "mailstream_workflow_sends_total": [({"workflow": "cart", "result": "sent"}, sent)],
        "mailstream_workflow_timer_lag_seconds_bucket": [
            ({"workflow": "cart", "le": le}, n) for le, n in zip(les, lag, strict=True)
        ],
        "mailstream_workflow_timer_lag_seconds_created": [({"workflow": "cart"}, 1.7e9)],
        "mailstream_events_total": [({"outcome": "processed"}, 1000.0)],
    }


def test_a_window_reports_growth_since_a_window_ago_or_since_start() -> None:
    window = Window(start=0.0, window_s=60.0)
    first = flat(_samples(5, 4, 1, 4, [3, 3, 3]))
    window.add(30.0, first)
    growth, span = window.growth(50.0, first)
    assert (
        span == 50.0
        and growth[("mailstream_workflow_sends_total", (("result", "sent"), ("workflow", "cart")))]
        == 4
    )
    window.add(61.0, flat(_samples(9, 8, 1, 8, [6, 6, 6])))
    later = flat(_samples(20, 18, 2, 17, [9, 10, 10]))
    growth, span = window.growth(95.0, later)  # base: the snapshot at 30 s
    figures = local_figures(growth, span)["cart"]
    assert span == 65.0
    assert figures["enrolled"] == 15 and figures["enrollments_per_min"] == pytest.approx(
        15 / 65 * 60
    )
    assert figures["templates"]["cart_reminder"] == {
        "ok": 14,
        "failed": {"undefined_variable": {"items": 1}},
    }
    assert figures["sends"]["sent"] == 13
    assert figures["timer_lag"] == {"0.5": 6, "1.0": 7, "+Inf": 7}
    assert ("mailstream_events_total", (("outcome", "processed"),)) not in later


def test_the_figures_of_two_workers_add_up_to_one_report() -> None:
    a = local_figures(flat(_samples(10, 9, 1, 9, [9, 9, 9])), 60.0)
    b = local_figures(flat(_samples(30, 27, 3, 26, [10, 11, 11])), 60.0)
    total = add_up([a, b])
    health = report(total, ["cart", "quiet"])
    cart = health["cart"]
    assert cart["figures"]["enrolled"] == 40 and cart["figures"]["enrollments_per_min"] == 40
    assert cart["figures"]["renders"] == 40 and cart["figures"]["sent"] == 35
    assert cart["figures"]["render_failures"] == [
        {
            "template": "cart_reminder",
            "renders": 40,
            "failed": 4,
            "share": 0.1,
            "reason": "undefined_variable",
            "variable": "items",
        }
    ]
    assert cart["figures"]["dead_letters_by_reason"] == {"template_error": 4}
    assert cart["figures"]["timers_fired"] == 20
    assert cart["recommendations"][0] == (
        "template `cart_reminder` failed 10 % of renders: missing variable `items`"
    )
    assert cart["score"] == 50 and cart["category"] == "poor"
    assert health["quiet"] == {
        "score": None,
        "category": NO_DATA,
        "recommendations": [],
        "figures": health["quiet"]["figures"],
    }
    assert health["quiet"]["figures"]["send_success_rate"] is None


def test_the_dashboard_shows_a_section_per_workflow() -> None:
    figures = local_figures(flat(_samples(10, 9, 1, 9, [9, 9, 9])), 60.0)
    s = {"workflow_health": {"window_s": 900.0, "workflows": report(figures, ["cart", "quiet"])}}
    html = render_page("_workflow_health.html", s=s)
    assert 'data-workflow="cart"' in html and 'data-workflow="quiet"' in html
    assert "failed 10 % of renders: missing variable `items`" in html
    assert 'data-score="50"' in html and "no data" in html
    assert "last 15 minutes" in html
