"""``mailstream emit`` and ``dlq``: an event ingest would reject is refused before it is
sent, and an unreachable broker is one clear line and a non-zero exit, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailstream.kafka.embedded_broker import free_port


def run(*argv: str, tmp_path: Path, config: str = "") -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own, against a port nothing listens on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    env["MAILSTREAM_BROKER_URL"] = f"kafka://127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "mailstream"]
    if config:
        path = tmp_path / "mailstream.yaml"
        path.write_text(config, encoding="utf-8")
        args += ["--config", str(path)]
    return subprocess.run(
        [*args, *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("argv", "code", "reason"),
    [
        pytest.param(["signup!", "--user", "u1"], "bad_event_type", "signup!", id="event-type"),
        pytest.param(
            ["identify", "--user", "u1", "--payload", '{"email": "not an address"}'],
            "bad_email",
            "email",
            id="bad-email",
        ),
        pytest.param(
            ["identify", "--user", "u1", "--payload", '{"timezone": "Mars/Olympus"}'],
            "bad_timezone",
            "Mars/Olympus",
            id="bad-timezone",
        ),
        pytest.param(
            ["signup", "--user", "u1", "--timestamp", "1700000000"],
            "",
            "seconds",
            id="timestamp-in-seconds",
        ),
        pytest.param(
            ["signup", "--user", "u1", "--tenant", "bad tenant"], "bad_tenant", "", id="tenant"
        ),
    ],
)
def test_an_event_ingest_would_dead_letter_is_not_sent(
    tmp_path: Path, argv: list[str], code: str, reason: str
) -> None:
    proc = run("emit", *argv, tmp_path=tmp_path)

    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("mailstream emit: not sent: ingest would dead-letter")
    assert code in proc.stderr and reason in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_an_unknown_tenant_is_not_sent_when_tenants_are_configured(tmp_path: Path) -> None:
    proc = run(
        "emit",
        "signup",
        "--user",
        "u1",
        "--tenant",
        "nobody",
        tmp_path=tmp_path,
        config="tenants:\n  acme: {}\n",
    )

    assert proc.returncode == 2
    assert "unknown_tenant" in proc.stderr and "'nobody'" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["emit", "signup", "--user", "u1"], id="emit"),
        pytest.param(["dlq", "--idle", "0.5"], id="dlq"),
    ],
)
def test_an_unreachable_broker_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, argv: list[str]
) -> None:
    proc = run(*argv, tmp_path=tmp_path)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Unclosed" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mailstream {argv[0]}: cannot reach the broker at 127.0.0.1:")
