"""Fixtures: every test that uses ``broker`` (or ``deployment``) runs once per broker tier,
with ids naming it (``[embedded]``, ``[kafka]``); one namespace and its workers per test.

A test that needs what only one broker has says so with ``@pytest.mark.only_on("kafka",
reason=...)``. Tiers: ``MAILSTREAM_TEST_BROKERS`` (see tests/integration/brokers.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from mailstream.kafka.local_cluster import KafkaUnavailable, LocalKafka
from tests.integration import brokers
from tests.integration.harness import Deployment


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "only_on(*tiers, reason): the broker tiers this test can run on, and why"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" not in metafunc.fixturenames:
        return
    names = brokers.tiers()
    marker = metafunc.definition.get_closest_marker("only_on")
    if marker is not None:
        if not marker.kwargs.get("reason"):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: only_on needs a reason")
        names = [n for n in names if n in marker.args]
    metafunc.parametrize("broker", names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    b = EmbeddedBroker("127.0.0.1", free_port(), log_path=log)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def kafka_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Under xdist, one cluster for all test processes: the first to ask starts it, and
    the controller stops it when they are all done (pytest_sessionfinish below)."""
    worker = getattr(request.config, "workerinput", None)
    try:
        if worker is None:
            cluster = LocalKafka(tmp_path_factory.mktemp("kafka"), nodes=3)
            cluster.start()
            yield cluster
            cluster.stop()
            return
        handle, pids = brokers.shared_kafka(tmp_path_factory.getbasetemp().parent / "shared")
    except KafkaUnavailable as exc:
        brokers.unavailable(str(exc))
        return
    if pids:
        request.config.workeroutput["kafka_pids"] = pids  # type: ignore[attr-defined]
    yield handle


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Any:
    """The broker of this test's tier (parametrized in pytest_generate_tests)."""
    if request.param == "kafka":
        return request.getfixturevalue("kafka_cluster")
    return request.getfixturevalue("embedded_broker")


@pytest.fixture
async def deployment(broker: Any, tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(broker, tmp_path)
    await d.setup()
    try:
        yield d
    finally:
        d.stop_all()
        for w in d.workers:
            if w.process is not None and w.process.returncode not in (0, -9, -15, None):
                print(f"--- {w.name} exited {w.process.returncode}:\n{w.log_tail()}")
