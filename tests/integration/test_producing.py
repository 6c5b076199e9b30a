"""Sending events as the README shows: its Python example runs as written against a real
broker, and ``mailstream emit`` delivers what ingest accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from mailstream.core.events import Event, decode_event
from mailstream.kafka.embedded_broker import EmbeddedBroker
from mailstream.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
README_ADDRESS = "127.0.0.1:9092"


def readme_python_example() -> str:
    """The first ``python`` block under "## Producing events"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Producing events", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no python example under ## Producing events"
    return found.group(1)


async def read_all(servers: str, topic: str, expected: int) -> list[Any]:
    """The topic's messages from the start, once ``expected`` of them have arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(messages) < expected:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                messages.extend(batch)
    finally:
        await consumer.stop()
    return messages


def accepted(messages: list[Any]) -> list[Event]:
    """The messages as ingest decodes them; each must be valid and keyed by its user."""
    events = []
    for m in messages:
        decoded = decode_event(m.value, max_bytes=65_536, default_tenant="default")
        assert isinstance(decoded, Event), decoded
        assert m.key == decoded.user_id.encode()
        events.append(decoded)
    return events


async def test_the_readme_python_example_runs_as_written(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    servers = broker.bootstrap_servers
    topic = "mailstream.events"  # the example's, EventProducer's default
    await ensure_topics(servers, [topic], 4)
    script = tmp_path / "example.py"
    script.write_text(readme_python_example().replace(README_ADDRESS, servers), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}

    ran = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0, ran.stderr
    events = [e for e in accepted(await read_all(servers, topic, 2)) if e.user_id == "u1"]
    assert [e.event_type for e in events][-2:] == ["identify", "cart_updated"]
    assert events[-2].payload["email"] == "ada@example.com"


async def test_emit_sends_what_ingest_accepts(broker: EmbeddedBroker, tmp_path: Path) -> None:
    servers = broker.bootstrap_servers
    topic = "emit-test.events"
    await ensure_topics(servers, [topic], 4)
    config = tmp_path / "mailstream.yaml"
    config.write_text(f"broker: {{url: 'kafka://{servers}'}}\ntopics: {{events: {topic}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}

    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailstream",
            "--config",
            str(config),
            "emit",
            "identify",
            "--user",
            "ada",
            "--payload",
            '{"email": "Ada@Example.com"}',
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0, ran.stderr
    event_id = ran.stdout.strip()
    (event,) = [e for e in accepted(await read_all(servers, topic, 1)) if e.event_id == event_id]
    assert event.user_id == "ada" and event.payload["email"] == "Ada@Example.com"
