"""A local Apache Kafka cluster: a pinned release resolved from Maven Central, and KRaft
nodes (broker and controller in one process) started on free loopback ports, their client
listener plain or SASL_SSL.

For the test suite's Kafka tier and for trying mailstream on the broker production runs
(``mailstream kafka``). It needs Java 17 or newer and Maven; the release's jars are
resolved once into a cache directory outside the repository.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mailstream.exceptions import BrokerError
from mailstream.kafka.embedded_broker import free_port, stop_process, wait_for_port

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
ARTIFACTS = ("kafka_2.13", "kafka-tools")
CACHE_ENV = "MAILSTREAM_KAFKA_CACHE"
HEAP = "-Xmx384m"

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mailstream</groupId>
  <artifactId>local-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""
DEPENDENCY = """    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>"""


class KafkaUnavailable(BrokerError):
    """Java or Maven is missing, or the release could not be resolved."""


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "mailstream")
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def missing_tools() -> list[str]:
    """The tools a local cluster needs that this machine lacks."""
    return [tool for tool in ("java", "mvn") if shutil.which(tool) is None]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` across processes (created if missing)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve(cache: Path | None = None, timeout: float = 900.0) -> Path:
    """The directory holding the pinned release's jars, resolved with Maven the first
    time (about 55 MB)."""
    libs = (cache or cache_dir()) / "libs"
    done = libs / ".complete"
    needed = ("java",) if done.exists() else ("java", "mvn")  # Maven only to resolve
    lacking = [tool for tool in needed if shutil.which(tool) is None]
    if lacking:
        raise KafkaUnavailable(
            f"a local Apache Kafka needs {' and '.join(lacking)} on the PATH (Java 17+, Maven)"
        )
    if done.exists():
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    # One resolution at a time: a second process (a test process starting its own
    # cluster) would start Kafka from a half-copied directory.
    with file_lock(libs.parent / ".resolve.lock"):
        if not done.exists():
            _copy_dependencies(libs, timeout)
            done.touch()
    return libs


def _copy_dependencies(libs: Path, timeout: float) -> None:
    dependencies = "\n".join(
        DEPENDENCY.format(artifact=a, version=KAFKA_VERSION) for a in ARTIFACTS
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(POM.format(dependencies=dependencies))
        cmd = [
            "mvn",
            "-q",
            "-B",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
        done_run = subprocess.run(  # noqa: S603 - Maven, with our own arguments
            cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout
        )
    if done_run.returncode != 0:
        tail = (done_run.stdout + done_run.stderr).strip().splitlines()[-5:]
        raise KafkaUnavailable(
            f"Maven could not resolve Apache Kafka {KAFKA_VERSION}: " + " | ".join(tail)
        )


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_arguments(cid: str, properties: Path) -> list[str]:
    """Kafka's storage tool formatting a node for cluster ``cid``. The id goes as one
    argument: one id in 64 starts with "-", which would be taken for an option."""
    return ["kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(properties)]


@dataclass(frozen=True)
class SecuredListener:
    """A SASL_SSL client listener: the broker's certificate chain and its private key (PEM,
    the key unencrypted), and the SCRAM users (name -> password) created when the storage
    is formatted, each for every mechanism in ``mechanisms``. With ``super_users``, the
    brokers authorize every request: those users may do anything, the others what ACLs
    (``LocalKafka.allow``) grant them."""

    cert_chain: bytes
    private_key: bytes
    users: dict[str, str] = field(default_factory=dict)
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
    super_users: tuple[str, ...] = ()

    def keystore_pem(self) -> bytes:
        """Key and chain as Kafka's PEM keystore reads them: the key in PKCS#8."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.private_key, password=None)
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pkcs8 + self.cert_chain

    def scram_arguments(self) -> list[str]:
        return [
            arg
            for name, password in self.users.items()
            for mechanism in self.mechanisms
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    # the brokers' own listener when the client one is SASL_SSL
    internal_port: int = 0


class LocalKafka:
    """``nodes`` combined broker+controller processes under ``root``, replication as a
    production cluster has it (3 and min.insync.replicas 2 with three nodes).

    With ``secured``, clients connect with SASL_SSL (SCRAM) on the same ports; the nodes
    talk to each other, and to their controllers, in plain text on loopback ports of
    their own."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        host: str = "127.0.0.1",
        secured: SecuredListener | None = None,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.secured = secured
        self.nodes = [
            Node(i + 1, free_port(host), free_port(host), self.root / f"node-{i + 1}")
            for i in range(nodes)
        ]
        for node in self.nodes if secured is not None else ():
            node.internal_port = free_port(host)
        self.replication = min(3, nodes)
        self.min_insync = 2 if nodes >= 3 else 1

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap_servers}"

    def properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes)
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://{self.host}:{node.port},CONTROLLER://{self.host}:{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": node.directory / "data",
            "num.partitions": 4,
            "default.replication.factor": self.replication,
            "min.insync.replicas": self.min_insync,
            "offsets.topic.replication.factor": self.replication,
            "transaction.state.log.replication.factor": self.replication,
            "transaction.state.log.min.isr": self.min_insync,
            # tests join groups by the dozen: no three-second wait for more members
            "group.initial.rebalance.delay.ms": 0,
        }
        if self.secured is not None:
            settings.update(self._secured_settings(node, self.secured))
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _secured_settings(self, node: Node, secured: SecuredListener) -> dict[str, object]:
        keystore = node.directory / "broker-keystore.pem"
        keystore.write_bytes(secured.keystore_pem())
        keystore.chmod(0o600)
        internal = f"INTERNAL://{self.host}:{node.internal_port}"
        client = f"SASL_SSL://{self.host}:{node.port}"
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        settings: dict[str, object] = {
            "listeners": f"{client},{internal},CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"{client},{internal}",
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL"
            ),
            "inter.broker.listener.name": "INTERNAL",
            "sasl.enabled.mechanisms": ",".join(secured.mechanisms),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": keystore,
            "ssl.client.auth": "none",
        }
        for mechanism in secured.mechanisms:
            settings[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = jaas
        if secured.super_users:
            settings["authorizer.class.name"] = (
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            )
            # the nodes reach each other and their controllers unauthenticated, on loopback
            supers = ["ANONYMOUS", *secured.super_users]
            settings["super.users"] = ";".join(f"User:{name}" for name in supers)
        return settings

    def allow(
        self,
        user: str,
        operations: list[str],
        *,
        topic_prefix: str | None = None,
        group: str | None = None,
        cluster: bool = False,
    ) -> None:
        """Grant ``user`` the ``operations`` (Read, Write, Describe, Create, ...) on the
        topics named ``topic_prefix...``, on consumer group ``group``, or on the cluster,
        with Kafka's own ACL tool, over the nodes' internal listener."""
        node = self.nodes[0]
        resource: list[str] = ["--cluster"] if cluster else []
        if topic_prefix is not None:
            resource = ["--topic", topic_prefix, "--resource-pattern-type", "prefixed"]
        if group is not None:
            resource = ["--group", group]
        args = ["--bootstrap-server", f"{self.host}:{node.internal_port or node.port}"]
        args += ["--add", "--allow-principal", f"User:{user}", *resource]
        for operation in operations:
            args += ["--operation", operation]
        cmd = self._java(resolve(), "org.apache.kafka.tools.AclCommand", *args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # noqa: S603
        if done.returncode != 0:
            raise BrokerError(f"granting {operations} to {user} failed: {done.stderr[-500:]}")

    def _java(self, libs: Path, *args: str) -> list[str]:
        return ["java", HEAP, "-cp", f"{libs}/*", *args]

    def start(self, timeout: float = 90.0) -> None:
        libs = resolve()
        cid = cluster_id()
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            props = node.directory / "server.properties"
            props.write_text(self.properties(node))
            cmd = self._java(libs, *format_arguments(cid, props))
            if self.secured is not None:
                cmd += self.secured.scram_arguments()
            formatted = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # noqa: S603
            if formatted.returncode != 0:
                output = (formatted.stdout + formatted.stderr).strip().splitlines()[-5:]
                raise KafkaUnavailable(
                    f"formatting node {node.node_id} failed: " + " | ".join(output)
                )
        for node in self.nodes:
            self._launch(node, libs)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait_listening(node, max(1.0, deadline - time.monotonic()))
        logger.info("local Apache Kafka %s on %s", KAFKA_VERSION, self.bootstrap_servers)

    def _launch(self, node: Node, libs: Path) -> None:
        node.log = node.log or open(node.directory / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        config_file = f"{node.directory / 'server.properties'}"
        node.process = subprocess.Popen(  # noqa: S603 - java, with our own arguments
            self._java(libs, "kafka.Kafka", config_file),
            stdout=node.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_listening(self, node: Node, timeout: float) -> None:
        if not wait_for_port(self.host, node.port, timeout):
            self.stop()
            raise KafkaUnavailable(
                f"Kafka node {node.node_id} did not listen on {self.host}:{node.port}"
                f" within {timeout:.0f} s (see {node.directory / 'server.log'})"
            )

    # Faults, for tests of how clients live through them. Nodes are numbered from 1.

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def signal_node(self, node_id: int, sig: int) -> None:
        """Send ``sig`` to one node: SIGKILL (a crash), SIGSTOP and SIGCONT (a node that
        freezes: its connections stay open and nothing answers)."""
        proc = self.node(node_id).process
        if proc is None or proc.poll() is not None:
            raise BrokerError(f"Kafka node {node_id} is not running")
        os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(30)

    def stop_node(self, node_id: int, timeout: float = 60.0) -> None:
        """Stop one node as an operator does before an upgrade (SIGTERM: a controlled
        shutdown that moves its leaderships first)."""
        node = self.node(node_id)
        proc, node.process = node.process, None
        if proc is not None:
            stop_process(proc, timeout)

    def start_node(self, node_id: int, timeout: float = 90.0) -> None:
        """Start a node that was stopped or killed again, on its own data and ports."""
        node = self.node(node_id)
        if node.process is not None and node.process.poll() is None:
            raise BrokerError(f"Kafka node {node_id} is already running")
        self._launch(node, resolve())
        self._wait_listening(node, timeout)

    def running(self) -> list[int]:
        """The nodes whose process is alive (a frozen one included)."""
        return [n.node_id for n in self.nodes if n.process is not None and n.process.poll() is None]

    def stop(self, timeout: float = 20.0) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)  # a frozen node cannot stop
                node.process.terminate()
        for node in self.nodes:
            proc, node.process = node.process, None
            if proc is not None:
                stop_process(proc, timeout)
            if node.log is not None:
                node.log.close()
                node.log = None

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
