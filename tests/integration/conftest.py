"""Fixtures: one embedded broker per session, one namespace and its workers per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from mailstream.kafka.local_cluster import LocalKafka
from tests.integration.harness import Deployment


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.environ.get("MAILSTREAM_TEST_BROKER") == "kafka":  # exploring: the Kafka tier
        cluster = LocalKafka(tmp_path_factory.mktemp("kafka"), nodes=3)
        cluster.start()
        yield cluster
        cluster.stop()
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    b = EmbeddedBroker("127.0.0.1", free_port(), log_path=log)
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def deployment(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(broker, tmp_path)
    await d.setup()
    try:
        yield d
    finally:
        d.stop_all()
        for w in d.workers:
            if w.process is not None and w.process.returncode not in (0, -9, -15, None):
                print(f"--- {w.name} exited {w.process.returncode}:\n{w.log_tail()}")
