"""A worker and ``mailstream emit`` against Apache Kafka with a SASL_SSL listener (SCRAM,
a CA and broker certificate made here): with the right settings events go end to end; a
wrong password, an untrusted CA or a plain-text client each stop the command at start,
in one line naming the cause. The brokers authorize every request: the worker has only
the ACLs docs/kafka.md lists.

Apache Kafka only: the embedded broker (tansu) has no SASL or TLS listener to test
against, so these tests start a one-node LocalKafka of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
import yaml

from mailstream.config.kafka_sections import SecurityConfig
from mailstream.kafka.access import KafkaAccess
from mailstream.kafka.local_cluster import LocalKafka, SecuredListener, missing_tools
from tests.integration import brokers
from tests.integration.harness import Deployment, Worker, wait_for

USER, PASSWORD = "mailstream-worker", "correct-horse-battery-staple"
# a worker of its own for the test of a missing ACL (ACLs stay for the module's cluster)
NARROW_USER = "mailstream-narrow"
# the tests' own clients (topics, producer): a super user
ADMIN, ADMIN_PASSWORD = "test-admin", "admin-password-for-the-tests"
PASSWORD_ENV = "MS_TEST_KAFKA_PASSWORD"
# how long a command refused by the broker may take to say so
REFUSED_WITHIN_S = 30.0


@dataclass
class Secured:
    cluster: LocalKafka
    ca_file: Path  # the CA that signed the broker's certificate
    other_ca_file: Path  # a CA that did not

    def security(self, user: str = USER, **changes: Any) -> dict[str, Any]:
        """The ``broker.security`` section that works, with ``changes``."""
        section = {
            "protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "username": user,
            "password_env": PASSWORD_ENV,
            "ca_file": str(self.ca_file),
        }
        return section | changes


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    if "kafka" not in brokers.tiers():
        pytest.skip(f"{brokers.TIERS_ENV} leaves the Kafka tier out")
    lacking = missing_tools()
    if lacking:
        brokers.unavailable(f"no {' or '.join(lacking)} for the secured Apache Kafka tests")
    root = tmp_path_factory.mktemp("secured-kafka")
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    other.cert_pem.write_to_path(str(root / "other-ca.pem"))
    listener = SecuredListener(
        cert_chain=b"".join(blob.bytes() for blob in cert.cert_chain_pems),
        private_key=cert.private_key_pem.bytes(),
        users={USER: PASSWORD, NARROW_USER: PASSWORD, ADMIN: ADMIN_PASSWORD},
        super_users=(ADMIN,),
    )
    cluster = LocalKafka(root / "kafka", nodes=1, secured=listener)
    cluster.start()
    try:
        yield Secured(cluster, root / "ca.pem", root / "other-ca.pem")
    finally:
        cluster.stop()


@pytest.fixture
async def deployment(secured: Secured, tmp_path: Path) -> AsyncIterator[Deployment]:
    access = KafkaAccess.from_settings(
        secured.cluster.bootstrap_servers,
        SecurityConfig.model_validate(secured.security(ADMIN)),
        {PASSWORD_ENV: ADMIN_PASSWORD},
    )
    d = Deployment(secured.cluster, tmp_path, access=access)  # type: ignore[arg-type]
    d.overrides["broker"] = {"security": secured.security()}
    await d.setup()
    try:
        yield d
    finally:
        d.stop_all()


def grant_the_worker_its_acls(cluster: LocalKafka, app_id: str, topics_prefix: str) -> None:
    """What docs/kafka.md says a worker needs, and nothing more."""
    for prefix in (topics_prefix, f"{app_id}-"):  # its topics; Faust's changelogs and leader
        operations = ["Read", "Write", "Describe", "Create", "DescribeConfigs"]
        cluster.allow(USER, operations, topic_prefix=prefix)
    cluster.allow(USER, ["DescribeConfigs"], cluster=True)  # default.replication.factor
    cluster.allow(USER, ["Read"], group=app_id)  # Faust's consumer group


def worker_env(deployment: Deployment, password: str = PASSWORD) -> Worker:
    worker = deployment.worker("w")
    worker.env[PASSWORD_ENV] = password
    return worker


async def test_a_worker_with_the_right_credentials_processes_events_end_to_end(
    deployment: Deployment,
) -> None:
    deployment.overrides["workflows"] = {
        "receipt": {
            "trigger": {"event": "order_completed"},
            "entry": "always",
            "steps": [{"send": "order_receipt", "category": "transactional"}],
        }
    }
    # the worker creates this one itself: the Create ACL at work
    deployment.overrides["topics"] = {"sessions": f"{deployment.app_id}.sessions"}
    grant_the_worker_its_acls(
        deployment.broker,  # type: ignore[arg-type]
        deployment.app_id,
        f"{deployment.app_id}.",
    )
    worker = worker_env(deployment).start()
    await deployment.wait_ready([worker])
    async with deployment.producer() as producer:  # over SASL_SSL too
        await producer.identify("ada", {"email": "ada@example.com"})
        await producer.emit("order_completed", "ada", {"order_id": "A-7", "total": 12})
        await producer.flush()
    outbox = deployment.root / "outbox"

    async def mailed() -> list[Path]:
        return sorted(outbox.glob("*/*.eml"))

    found = await wait_for(mailed, 40, "the receipt in the outbox")
    assert len(found) == 1
    mail = message_from_bytes(found[0].read_bytes())
    assert mail["To"] == "ada@example.com"

    async def recorded_sent() -> bool:  # the record follows the provider's answer
        status, view = await worker.get("/api/users/ada", full="1")
        assert status == 200 and view["traits"]["email"] == "ada@example.com"
        return [d["state"] for d in view["deliveries"]] == ["sent"]

    await wait_for(recorded_sent, 20, "the delivery recorded as sent")
    worker.stop()
    assert PASSWORD not in worker.log_path.read_text(errors="replace")


def test_a_worker_that_cannot_read_the_default_replication_stops_naming_the_key(
    deployment: Deployment, secured: Secured
) -> None:
    # Without DescribeConfigs on the cluster the broker's default.replication.factor is
    # unknown; a guess of 1 would leave every topic one broker away from losing data.
    cluster: LocalKafka = deployment.broker  # type: ignore[assignment]
    for prefix in (f"{deployment.app_id}.", f"{deployment.app_id}-"):
        operations = ["Read", "Write", "Describe", "Create", "DescribeConfigs"]
        cluster.allow(NARROW_USER, operations, topic_prefix=prefix)
    deployment.overrides["broker"] = {"security": secured.security(NARROW_USER)}
    output, _took = refused(deployment, PASSWORD, "worker")
    assert "Traceback" not in output, output
    assert "topics.replication: the broker did not say its default" in output, output


def refused(deployment: Deployment, password: str, *command: str) -> tuple[str, float]:
    """Run ``mailstream <command>`` to its end; its output and how long it took. It must
    exit non-zero."""
    env = worker_env(deployment, password).env
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "mailstream", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=REFUSED_WITHIN_S + 30,
    )
    took = time.monotonic() - started
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0, output
    return output, took


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("wrong password", "authentication failed for user 'mailstream-worker'"),
        ("untrusted CA", "its TLS certificate is not trusted"),
        ("plain text", "its listener likely expects TLS or SASL"),
    ],
)
@pytest.mark.parametrize("command", ["worker", "emit"])
def test_a_refused_connection_stops_the_command_at_start_saying_why(
    deployment: Deployment, secured: Secured, case: str, cause: str, command: str
) -> None:
    password = "wrong-password" if case == "wrong password" else PASSWORD
    if case == "untrusted CA":
        deployment.overrides["broker"] = {
            "security": secured.security(ca_file=str(secured.other_ca_file))
        }
    if case == "plain text":
        deployment.overrides["broker"] = {}  # no security section: PLAINTEXT
    deployment.write_config()
    args = ["worker"] if command == "worker" else ["emit", "signup", "--user", "u1"]
    output, took = refused(deployment, password, *args)
    assert took < REFUSED_WITHIN_S, output
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"mailstream {command}: the broker at "), output
    assert cause in lines[0], output
    assert password not in output


def test_a_tls_client_against_a_plain_listener_stops_in_bounded_time(
    broker: Any, tmp_path: Path
) -> None:
    # The session's broker speaks plain text. Apache Kafka closes the connection; the
    # embedded broker leaves the handshake hanging, and the client's own wait is a minute.
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = tmp_path / "mailstream.yaml"
    security = f"{{protocol: SSL, ca_file: {tmp_path / 'ca.pem'}}}"
    config.write_text(f"broker:\n  url: {broker.url}\n  security: {security}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "mailstream", "--config", str(config), "emit", "signup"]
        + ["--user", "u1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=REFUSED_WITHIN_S + 60,
    )
    took = time.monotonic() - started
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and took < REFUSED_WITHIN_S, (took, output)
    assert output.splitlines() == [output] and "Traceback" not in output, output
    assert "its listener likely speaks plain text" in output, output


@pytest.mark.timeout(300)
def test_the_pipeline_bench_runs_on_the_secured_cluster(secured: Secured, tmp_path: Path) -> None:
    # Every client of the bench (its producers, the bare Faust agents of the ceiling, its
    # workers, the admin client that deletes the run's topics) connects with SASL_SSL.
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"broker": {"security": secured.security(ADMIN)}}))
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    env[PASSWORD_ENV] = ADMIN_PASSWORD
    run = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "mailstream", "--config", str(config), "bench"]
        + ["--events", "2000", "--mix-users", "100", "--users", "200"]
        + ["--latency-seconds", "1", "--pairs", "1"]
        + ["--broker", secured.cluster.url, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = orjson.loads(out.read_bytes())
    # every phase measured something
    assert result["ceiling_events_per_s"] > 0 and result["pipeline_events_per_s"] > 0
    assert result["two_workers_events_per_s"] > 0
    assert result["latency_receipts"] > 0 and result["latency_p99_ms"] > 0
    assert result["state_users"] == 200 and result["state_worker_rss_mb"] > 0
    # no figure for a broker process the bench did not start
    assert result["broker_cpu_us_per_event"] is None
    assert result["latency_broker_cores_busy"] is None
    assert result["cores_busy_worker_broker"].endswith("+ n/a")
