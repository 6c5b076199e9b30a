"""The Kafka tier of the integration tests never passes silently: without Java it is
skipped with one loud line, and with CI=true the run fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailstream.kafka.local_cluster import KafkaUnavailable, format_arguments, resolve

ROOT = Path(__file__).resolve().parents[2]
A_KAFKA_TEST = "tests/integration/test_producing.py"


def path_without_java(tmp_path: Path) -> str:
    """A PATH holding every command of this machine's but java and mvn."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else []:
            link = bin_dir / tool.name
            if tool.name not in ("java", "mvn") and not link.exists():
                link.symlink_to(tool)
    return str(bin_dir)


def run_kafka_tier(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MAILSTREAM_"))}
    env |= {"PATH": path_without_java(tmp_path), "CI": ci, "MAILSTREAM_TEST_BROKERS": "kafka"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    return subprocess.run(  # noqa: S603 - this interpreter, our own arguments
        [*cmd, A_KAFKA_TEST], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_without_java_the_kafka_tier_is_skipped_loudly(tmp_path: Path) -> None:
    done = run_kafka_tier(tmp_path, ci="")
    assert done.returncode == 0, done.stdout
    loud = "*** the Kafka tier did not run: a local Apache Kafka needs java on the PATH"
    assert f"{loud} (Java 17+, Maven) ***" in done.stdout
    assert " passed" not in done.stdout


def test_without_java_the_kafka_tier_fails_ci(tmp_path: Path) -> None:
    done = run_kafka_tier(tmp_path, ci="true")
    assert done.returncode != 0
    assert "the Kafka tier did not run and CI=true" in done.stdout


def test_resolving_kafka_without_java_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_without_java(tmp_path))
    with pytest.raises(KafkaUnavailable, match="needs java"):
        resolve()


def test_a_cluster_id_that_starts_with_a_dash_is_given_to_the_storage_tool_as_one_argument(
    tmp_path: Path,
) -> None:
    props = tmp_path / "server.properties"
    args = format_arguments("-Ab3dTq9sQ2mWk1xYz0uVw", props)

    assert "--cluster-id=-Ab3dTq9sQ2mWk1xYz0uVw" in args
    assert not any(a.startswith("-A") for a in args)  # nothing left for argparse to misread
    assert args[-2:] == ["-c", str(props)]
