"""The dashboard's arithmetic and labels: lag that never shows an end below what was
applied, the funnel by step id, and a user's suppression including the global list."""

from __future__ import annotations

from typing import Any

import pytest

from mailstream.web.board import (
    label_funnel,
    partition_lag,
    step_labels,
    suppression_summary,
    workflow_step_labels,
)
from mailstream.workflows.spec import WorkflowSpec


@pytest.mark.parametrize(
    ("end", "applied", "want"),
    [
        pytest.param(120, 100, {"highwater": 120, "applied": 100, "lag": 20}, id="behind"),
        pytest.param(100, 100, {"highwater": 100, "applied": 100, "lag": 0}, id="caught-up"),
        pytest.param(
            97, 100, {"highwater": 100, "applied": 100, "lag": 0}, id="short-end-never-below"
        ),
        pytest.param(5, None, {"highwater": 5, "applied": 0, "lag": 5}, id="nothing-applied"),
        pytest.param(None, 7, {"highwater": None, "applied": 7, "lag": None}, id="no-answer"),
    ],
)
def test_partition_lag(end: int | None, applied: int | None, want: dict[str, Any]) -> None:
    assert partition_lag(end, applied) == want


CART = WorkflowSpec.model_validate(
    {
        "trigger": {"event": "cart_updated"},
        "steps": [
            {"id": "first_wait", "wait": "1h"},
            {"send": "cart_reminder"},
            {"id": "nudge", "send": "cart_reminder_discount"},
            {"wait": "1d"},
        ],
    }
)


def test_steps_are_named_by_their_ids() -> None:
    assert step_labels("cart", CART) == {
        "0": "first_wait",
        "1": "#1 send cart_reminder",
        "2": "nudge",
        "3": "#3 wait",
    }


def test_the_funnel_carries_the_labels_of_the_steps_it_counts() -> None:
    funnel = {
        "cart": {"enrolled": 3.0, "waiting": {"0": 2, "2": 1}},
        "gone": {"enrolled": 1.0, "waiting": {"4": 1}},  # a workflow no longer configured
    }

    labelled = label_funnel(funnel, workflow_step_labels({"cart": CART}))

    assert labelled["cart"]["steps"] == {"0": "first_wait", "2": "nudge"}
    assert labelled["cart"]["waiting"] == {"0": 2, "2": 1}  # the JSON keeps the indexes
    assert labelled["gone"]["steps"] == {"4": "#4"}


GLOBAL = {"reason": "complaint", "source": "import", "at": 1, "scope": "all"}
OWN = {"unsubscribe": {"scope": "marketing", "source": "link", "at": 2}}


@pytest.mark.parametrize(
    ("view", "suppressed"),
    [
        pytest.param({"suppressions": {}, "global_suppression": GLOBAL}, True, id="global-only"),
        pytest.param({"suppressions": OWN, "global_suppression": None}, True, id="own-only"),
        pytest.param({"suppressions": OWN, "global_suppression": GLOBAL}, True, id="both"),
        pytest.param({"suppressions": {}, "global_suppression": None}, False, id="neither"),
        pytest.param({}, False, id="older-worker-view"),
    ],
)
def test_a_user_is_suppressed_by_their_own_entries_or_the_global_list(
    view: dict[str, Any], suppressed: bool
) -> None:
    summary = suppression_summary(view)

    assert summary["suppressed"] is suppressed
    assert summary["global"] == view.get("global_suppression")


def test_the_user_page_never_says_not_suppressed_beside_a_global_entry() -> None:
    from mailstream.web.pages import render_page

    view = {
        "user_id": "u1",
        "tenant_id": "default",
        "traits": {"email": "a**@example.com"},
        "consent": {},
        "first_seen": 1,
        "last_activity": 1,
        "suppressions": {},
        "global_suppression": GLOBAL,
        "enrollments": {},
        "send_decisions": [
            {
                "at": 1,
                "workflow": "w",
                "template": "tips",
                "category": "marketing",
                "decision": "drop",
                "reason": "globally_suppressed",
            }
        ],
        "deliveries": [],
    }

    html = render_page(
        "user.html", user_id="u1", status=200, u=view, sup=suppression_summary(view), csrf="x"
    )

    assert "not suppressed" not in html
    assert "complaint (global list, by address)" in html
