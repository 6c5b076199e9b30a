"""``mailstream worker`` refuses, in one line and before it starts anything, a web port
someone else listens on and a data directory another worker holds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from mailstream.kafka.embedded_broker import free_port
from mailstream.runtime.preflight import lock_data_dir


def run_worker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    # nothing listens there: a worker that got as far as the broker would say so instead
    env["MAILSTREAM_BROKER_URL"] = f"kafka://127.0.0.1:{free_port()}"
    env["MAILSTREAM_CLUSTER_SECRET"] = "a-cluster-secret-of-32-characters-or-more"
    return subprocess.run(
        [sys.executable, "-m", "mailstream", "worker", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_web_port_in_use_is_one_line_naming_the_port_and_the_key(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        run = run_worker(tmp_path, "--web-port", str(port), "--data-dir", str(tmp_path / "d"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"mailstream worker: web.port: port {port} on 127.0.0.1 is already in use (another"
        " worker or program listens there); stop it, or choose another port (--web-port or"
        " MAILSTREAM_WEB_PORT)"
    ]


def test_a_data_dir_another_worker_holds_says_so_not_to_wait_for_the_broker(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with lock_data_dir(data):  # this process plays the worker already running there
        run = run_worker(tmp_path, "--web-port", str(free_port()), "--data-dir", str(data))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert f"another worker (pid {os.getpid()}) is using {data}" in lines[0]
    assert "--data-dir or MAILSTREAM_DATA_DIR" in lines[0]
    assert "broker" not in lines[0]
