"""Session hooks for the broker tiers that must run in pytest's controlling process, which
under xdist collects no tests and so never loads tests/integration/conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration import brokers

KAFKA_PIDS = pytest.StashKey[list[int]]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A test process is done; if it started the shared Kafka cluster, note the nodes."""
    pids = getattr(node, "workeroutput", {}).get("kafka_pids")
    if pids:
        node.config.stash.setdefault(KAFKA_PIDS, []).extend(pids)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Every test process is done: stop the Kafka cluster they shared."""
    pids = session.config.stash.get(KAFKA_PIDS, [])
    if pids:
        brokers.stop_pids(pids)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One loud line when the Kafka tier was skipped (see tests/integration/brokers.py)."""
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if brokers.SKIPPED in reason:
            message = reason[reason.index(brokers.SKIPPED) :]
            terminalreporter.write_line(f"*** {message} ***", red=True, bold=True)
            return
