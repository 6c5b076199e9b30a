"""The global suppression list through the real CLI and a worker's copy, on the real broker."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from mailstream.config.load import load_config, parse_config
from mailstream.kafka.embedded_broker import EmbeddedBroker, free_port
from mailstream.suppression.entries import Suppression
from mailstream.suppression.global_list import GlobalSuppressionList, publish, read_all
from tests.integration.harness import wait_for

PARTITIONS = 3


@dataclass
class Suppressions:
    """One test's suppression topic, a config naming it, and the CLI pointed at it."""

    broker: EmbeddedBroker
    root: Path
    topic: str

    @property
    def config_path(self) -> Path:
        return self.root / "mailstream.yaml"

    def write_config(self) -> None:
        doc = {
            # the embedded broker says so: it cannot produce idempotently
            "broker": {"url": self.broker.url, "embedded": isinstance(self.broker, EmbeddedBroker)},
            "topics": {"partitions": PARTITIONS, "suppression": self.topic},
        }
        self.config_path.write_text(yaml.safe_dump(doc))

    async def cli(self, *args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailstream",
            "--config",
            str(self.config_path),
            "suppress",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def listed(self) -> list[dict[str, Any]]:
        code, out, err = await self.cli("list", "--json")
        assert code == 0, err
        return [orjson.loads(line) for line in out.splitlines()]

    async def read(self) -> list[str]:
        """The listed addresses, read in-process (quicker than the CLI's one-second idle)."""
        return sorted(await read_all(load_config(self.config_path, env={}), idle=0.3))

    def local_copy(self, name: str = "copy") -> GlobalSuppressionList:
        return GlobalSuppressionList(self.broker.bootstrap_servers, self.topic, self.root / name)


@pytest.fixture
def suppressions(broker: EmbeddedBroker, tmp_path: Path) -> Suppressions:
    s = Suppressions(broker, tmp_path, f"t{uuid.uuid4().hex[:10]}.suppression")
    s.write_config()
    return s


async def until(probe: Any, what: str, timeout: float = 10.0) -> None:
    async def check() -> bool:
        return bool(probe())

    await wait_for(check, timeout, what, interval=0.05)


def mixed_case_csv(count: int) -> tuple[str, dict[str, str]]:
    """A CSV with a header and untidy addresses, and the normalised address -> reason."""
    lines = ["Name, EMAIL ,Reason"]
    expected = {}
    for i in range(count):
        reason = "unsubscribe" if i % 10 == 0 else ""
        lines.append(f'"User {i}", \tUser.{i}@Example{i % 7}.COM ,{reason}')
        expected[f"user.{i}@example{i % 7}.com"] = reason or "import"
    return "\n".join(lines) + "\n", expected


async def test_import_follow_remove_resume_and_list(suppressions: Suppressions) -> None:
    text, expected = mixed_case_csv(300)
    csv_path = suppressions.root / "do-not-mail.csv"
    csv_path.write_text(text, encoding="utf-8")

    code, out, err = await suppressions.cli("import", str(csv_path))
    assert code == 0, err
    assert out.strip() == "suppressed 300 addresses"

    copy = suppressions.local_copy()
    await copy.start()
    try:
        await asyncio.wait_for(copy.ready.wait(), 15)
        assert len(copy) == 300
        for address, reason in expected.items():
            for form in (address, address.upper(), f"  {address.title()}\t"):
                entry = copy.get(form)
                assert entry is not None, form
                assert (entry.reason, entry.source) == (reason, "import:do-not-mail.csv")
        assert copy.get("nobody@example.com") is None
        assert copy.get("not an address") is None

        gone = ["user.1@example1.com", "user.2@example2.com"]
        code, out, err = await suppressions.cli("remove", "USER.1@example1.com", gone[1])
        assert (code, out.strip()) == (0, "removed 2 addresses"), err
        await until(lambda: all(copy.get(a) is None for a in gone), "removals to arrive")
        assert len(copy) == 298

        code, out, err = await suppressions.cli("add", " Ada@Example.org", "--reason", "complaint")
        assert (code, out.strip()) == (0, "suppressed 1 addresses"), err
        await until(lambda: copy.get("ada@example.org") is not None, "the addition to arrive")
        entry = copy.get("ada@example.org")
        assert entry is not None and (entry.reason, entry.source) == ("complaint", "cli")
        assert len(copy) == 299
    finally:
        await copy.stop()

    # A restart on the same store resumes from the stored offsets: nothing is read again.
    again = suppressions.local_copy()
    applied: list[int] = []
    apply = again._apply

    def counting_apply(batch: dict[Any, list[Any]]) -> None:
        applied.append(sum(len(records) for records in batch.values()))
        apply(batch)

    again._apply = counting_apply  # type: ignore[method-assign]
    await again.start()
    try:
        assert len(again) == 299, "the count comes back from the store"
        await asyncio.wait_for(again.ready.wait(), 15)
        assert len(again) == 299
        assert sum(applied) == 0, "records applied before the restart were read again"
        assert again.get("USER.3@EXAMPLE3.COM") is not None
        assert again.get("user.1@example1.com") is None
    finally:
        await again.stop()

    listed = await suppressions.listed()
    addresses = [doc["address"] for doc in listed]
    assert addresses == sorted(set(expected) - set(gone) | {"ada@example.org"})
    by_address = {doc.pop("address"): doc for doc in listed}
    assert by_address["ada@example.org"]["reason"] == "complaint"
    assert by_address["user.10@example3.com"] == {
        "reason": "unsubscribe",
        "source": "import:do-not-mail.csv",
        "at": by_address["user.10@example3.com"]["at"],
        "scope": "marketing",
    }

    code, out, _ = await suppressions.cli("list")
    assert code == 0
    first = out.splitlines()[0].split()
    assert first[:4] == ["ada@example.org", "complaint", "all", "cli"]


async def test_an_invalid_row_fails_the_whole_import(suppressions: Suppressions) -> None:
    csv_path = suppressions.root / "list.csv"
    csv_path.write_text("email\nada@example.com\n\nnot-an-address\nbob@example.com\n")

    code, out, err = await suppressions.cli("import", str(csv_path))
    assert code == 2
    assert out == ""
    assert f'{csv_path}: line 4: "not-an-address" is not an email address' in err
    assert "1 lines failed" in err and "--skip-invalid" in err
    assert await suppressions.read() == []

    code, out, err = await suppressions.cli("import", str(csv_path), "--skip-invalid")
    assert code == 0, err
    assert out.splitlines() == ["suppressed 2 addresses", "skipped 1 invalid lines"]
    assert "line 4" in err
    assert await suppressions.read() == ["ada@example.com", "bob@example.com"]

    code, _, err = await suppressions.cli("add", "ok@example.com", "nope@")
    assert code == 2
    assert '"nope@" is not an email address' in err


async def test_a_copy_started_before_the_topic_exists_waits_for_it(
    suppressions: Suppressions,
) -> None:
    copy = suppressions.local_copy()
    await copy.start()
    try:
        assert not copy.ready.is_set()
        code, _, err = await suppressions.cli("add", "ada@example.com")
        assert code == 0, err
        await asyncio.wait_for(copy.ready.wait(), 15)
        await until(lambda: copy.get("ada@example.com") is not None, "the entry to arrive")
        assert len(copy) == 1
    finally:
        await copy.stop()


async def test_a_broker_that_lost_its_data_is_read_again(tmp_path: Path) -> None:
    """Embedded only: a broker restarted without its data is what the embedded broker's
    memory storage does; this test runs one of its own to restart."""
    broker = EmbeddedBroker("127.0.0.1", free_port(), log_path=tmp_path / "broker.log")
    broker.start()
    try:
        config = parse_config(
            {
                "broker": {"url": broker.url, "embedded": True},
                "topics": {"partitions": 2, "suppression": "s"},
            },
            env={},
        )
        entry = Suppression("manual", "test", 1_700_000_000_000)
        await publish(config, [(f"old{i}@example.com", entry) for i in range(40)])
        copy = GlobalSuppressionList(broker.bootstrap_servers, "s", tmp_path / "copy")
        await copy.start()
        try:
            await asyncio.wait_for(copy.ready.wait(), 15)
            assert len(copy) == 40
        finally:
            await copy.stop()

        broker.stop()  # memory storage: the topic and its records are gone
        broker.start()
        await publish(config, [(f"new{i}@example.com", entry) for i in range(3)])

        copy = GlobalSuppressionList(broker.bootstrap_servers, "s", tmp_path / "copy")
        await copy.start()
        try:
            await asyncio.wait_for(copy.ready.wait(), 15)
            assert len(copy) == 3
            assert copy.get("old1@example.com") is None
            assert copy.get("new1@example.com") == entry
        finally:
            await copy.stop()
    finally:
        broker.stop()
