"""``mailstream demo`` as a new user runs it: Ctrl-C in the terminal, and ports in use.

Embedded only: the demo starts the embedded broker itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mailstream.kafka.embedded_broker import free_port


def demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "mailstream", "demo", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # its own process group, as a shell gives a foreground job
        start_new_session=True,
    )


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} within {timeout:.0f} s:\n" + "\n".join(seen))


def test_ctrl_c_stops_the_traffic_and_the_worker_before_the_broker(tmp_path: Path) -> None:
    proc = demo(
        tmp_path, "--port", str(free_port()), "--web-port", str(free_port()), "--rate", "50"
    )
    try:
        read_until(proc, "Ctrl-C stops everything", 90)
        time.sleep(3)
        worker_log = tmp_path / ".demo" / "worker.log"
        before = len(worker_log.read_text(errors="replace").splitlines())
        # The terminal sends SIGINT to the whole foreground process group.
        pressed = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()  # unclosed, a failure here is reported again as another's
    assert proc.returncode == 0, out
    assert out.rstrip().endswith("stopped.")
    after = worker_log.read_text(errors="replace").splitlines()[before:]
    errors = [line for line in after if "[ERROR]" in line or "Traceback" in line]
    assert not errors, "errors while stopping:\n" + "\n".join(after)
    assert took < 8, f"Ctrl-C took {took:.1f} s"


def test_a_web_port_in_use_stops_the_demo_before_it_starts_anything(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = demo(tmp_path, "--port", str(free_port()), "--web-port", str(port))
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out.strip().splitlines() == [
        f"mailstream demo: web.port: port {port} on 127.0.0.1 is already in use (another"
        " worker or program listens there); stop it, or choose another port (--web-port)"
    ]
    assert not (tmp_path / ".demo" / "broker.log").exists()
