"""The ``mailstream`` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from mailstream.config.load import CONFIG_ENV, load_config
from mailstream.config.schema import Config
from mailstream.core.cluster_trust import cluster_key
from mailstream.exceptions import BrokerError, MailstreamError
from mailstream.observability import log_rate
from mailstream.runtime.signals import stop_on_signals

if TYPE_CHECKING:
    from mailstream.runtime.components import Runtime

# allocations between young-generation collections in a worker (Python's default: 700)
GC_THRESHOLD = 20_000
# how long a stopping worker may take before it exits anyway
STOP_GRACE_S = 10.0

logger = logging.getLogger("mailstream.worker")

DESCRIPTION = """\
mailstream: event-driven email automation on Kafka.

commands:
  demo      embedded broker + one worker + synthetic traffic; Ctrl-C stops all
  broker    run the embedded Kafka-compatible broker and create the topics
  worker    run a worker (ingest, workflows, policy, delivery, HTTP API and metrics)
  emit      send one event
  loadgen   send a realistic mix of synthetic events
  dlq       print dead-lettered messages with their reasons
  suppress  add, remove, import or list suppressed addresses; lift a user's
  users     export what is held about a user (an access request)
  check     validate a config file and the templates without starting anything
  render    preview a template: subject, text and HTML
  bench     measure the pipeline, timer lag, delivery rate, HTTP ingestion or guarantees
  kafka     run a local Apache Kafka cluster (needs Java and Maven)
"""


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def template_problems(config: Config) -> list[str]:
    """Syntax errors in the templates, and templates that workflows name but lack."""
    from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates

    directory = config.templates_dir or DEFAULT_TEMPLATE_DIR
    templates = Templates(directory)
    problems = [str(e) for e in templates.check()]
    available = set(templates.names())
    for workflow in config.compiled_workflows():
        for step in workflow.steps:
            key = {"send": "send", "digest": "digest.template"}.get(step.kind)
            if key is not None and step.template not in available:
                problems.append(
                    f"workflows.{workflow.name}.steps[{step.index}].{key}: no template "
                    f"{step.template!r} in {directory}"
                )
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    from mailstream.kafka.access import kafka_access

    config = load_config(args.file or args.config)
    where = args.file or args.config or os.environ.get(CONFIG_ENV) or "<defaults>"
    problems = template_problems(config)
    if problems:
        raise MailstreamError("\n".join(problems))
    access = kafka_access(config)  # an unset password variable or unusable file fails here
    print(f"{where}: ok")
    print(f"  broker      {config.broker.url} (embedded: {config.broker.embedded})")
    print(
        f"  security    {access.security_protocol}"
        + (f" {access.sasl_mechanism} as {access.username}" if access.username else "")
    )
    print(f"  topics      {', '.join(config.topics.all_names())} x{config.topics.partitions}")
    print(f"  web         {config.web_url}")
    print(f"  data dir    {config.data_dir}")
    names = ", ".join(w.name for w in config.compiled_workflows()) or "none"
    print(f"  workflows   {names}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from mailstream.kafka.embedded_broker import EmbeddedBroker
    from mailstream.kafka.topics import create_topics

    config = _config(args)
    broker = EmbeddedBroker(args.host, args.port)
    stop = stop_on_signals()
    broker.start()
    try:
        asyncio.run(create_topics(config, broker.bootstrap_servers))
        print(f"broker ready at {broker.url} (pid {broker.process.pid if broker.process else '?'})")
        names = ", ".join(config.topics.all_names())
        print(f"topics: {names} ({config.topics.partitions} partitions)")
        print("start workers with broker.embedded: true (or MAILSTREAM_BROKER_EMBEDDED=true)")
        sys.stdout.flush()
        while not stop.is_set() and broker.process is not None and broker.process.poll() is None:
            stop.wait(0.2)
        if not stop.is_set():
            print("the broker process exited", file=sys.stderr)
            return 1
    finally:
        broker.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    env = dict(os.environ)  # the command line's options win over the environment's
    if args.web_port is not None:
        env["MAILSTREAM_WEB_PORT"] = str(args.web_port)
    if args.data_dir is not None:
        env["MAILSTREAM_DATA_DIR"] = args.data_dir
    config = load_config(args.config, env)  # fail here, with the key path, before Faust starts
    problems = template_problems(config)
    if problems:
        raise MailstreamError("\n".join(problems))
    cluster_key(config.cluster.secret_env, env)  # a missing secret fails here, first
    from faust import Worker

    from mailstream.app import build_app
    from mailstream.kafka.access import kafka_access
    from mailstream.kafka.topics import create_topics
    from mailstream.runtime.preflight import check_local_state, check_port_free, lock_data_dir

    check_port_free(
        config.web.host, config.web.port, "web.port", "--web-port or MAILSTREAM_WEB_PORT"
    )
    lock_data_dir(config.data_dir)
    access = kafka_access(config)  # an unset password variable fails here, naming its key
    # A wrong password, an untrusted certificate or a listener speaking TLS: one line
    # saying which, now, rather than clients retrying until a timeout says "unreachable".
    asyncio.run(access.check())
    # the topics' replication resolved (the broker's default), for the tables' changelogs
    config = asyncio.run(create_topics(config, access))
    # A broker that lost its data (a memory-only one restarted) behind the local state:
    # one line saying so, rather than Faust's recovery crashing on every start.
    asyncio.run(check_local_state(access, config.data_dir, config.app_id, config.broker.embedded))
    app, rt = build_app(config, env)  # a missing secret or API key fails here, first

    # The worker makes many short-lived objects per event and keeps a large, long-lived
    # heap (Faust, the modules, the app): collect the young generation less often, and
    # keep what exists at start out of every full collection.
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    gc.freeze()
    worker = _stopping_worker(Worker, rt)(app, loglevel=config.log_level)
    worker.execute_from_commandline()
    return 0


def _stopping_worker(base: type, rt: Runtime) -> type:
    """Faust's worker, with a deadline on stopping.

    Faust waits up to a minute for its consumer thread when the broker has gone away;
    a worker that is stopping (a crash, or a signal) exits after ``STOP_GRACE_S``
    whatever is still running: non-zero after a crash, so a supervisor restarts it."""

    class StoppingWorker(base):  # type: ignore[misc]  # Faust's Worker is untyped
        repeat: log_rate.RepeatFilter | None = None

        def on_setup_root_logger(self, root: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(root, level)
            # Without the broker, aiokafka logs hundreds of lines a second.
            self.repeat = log_rate.install(root.handlers)
            from mailstream.kafka.broker_watch import DataLostTraceback

            data_lost = DataLostTraceback()
            for handler in root.handlers:
                handler.addFilter(data_lost)

        async def on_started(self) -> None:
            repeat = self.repeat
            if repeat is not None:

                async def summaries() -> None:
                    while True:
                        await asyncio.sleep(5.0)
                        log_rate.log_summaries(repeat)

                self.add_future(summaries())
            await super().on_started()  # waits until the worker stops

        async def on_stop(self) -> None:
            reason = self.crash_reason
            if reason is not None:
                _explain_crash(reason, rt)
            threading.Thread(target=self._exit_if_still_stopping, daemon=True).start()
            await super().on_stop()

        def _exit_if_still_stopping(self) -> None:
            time.sleep(STOP_GRACE_S)
            code = 1 if self.crash_reason is not None else 0
            logger.critical("the worker did not stop within %.0f s: exiting", STOP_GRACE_S)
            logging.shutdown()
            os._exit(code)

    return StoppingWorker


def _explain_crash(reason: BaseException, rt: Runtime) -> None:
    """One line on why the worker crashed and what to do; exits at once when the broker
    lost the data the local state was built from (restarting would crash again)."""
    from faust.exceptions import ConsistencyError

    config, broker_contact = rt.config, rt.broker_contact
    from mailstream.kafka.broker_watch import (
        EXIT_BROKER_DATA_LOST,
        consistency_error_where,
        data_lost_advice,
    )

    if isinstance(reason, ConsistencyError):
        where = consistency_error_where(str(reason))
        logger.critical(data_lost_advice(config.bootstrap_servers, config.data_dir, where))
        logging.shutdown()
        os._exit(EXIT_BROKER_DATA_LOST)
    if not broker_contact.reachable(time.monotonic()):
        logger.critical(
            "the worker crashed (%r) and is stopping; the broker at %s is %s: start the"
            " worker again once the broker is reachable",
            reason,
            config.bootstrap_servers,
            broker_contact.status(time.monotonic()),
        )
    else:
        logger.critical("the worker crashed (%r) and is stopping", reason)


def checked_event(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """The event ``emit`` would send, checked as ingest checks it: an event ingest would
    dead-letter is refused here with the same reason."""
    from mailstream.core.events import Invalid, decode_event
    from mailstream.producer import make_event

    try:
        payload = orjson.loads(args.payload) if args.payload else {}
    except orjson.JSONDecodeError as exc:
        raise MailstreamError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MailstreamError("--payload must be a JSON object")
    event = make_event(
        args.event_type,
        args.user,
        payload,
        event_id=args.event_id,
        timestamp=args.timestamp,
        tenant_id=args.tenant,
    )
    decoded = decode_event(
        orjson.dumps(event),
        max_bytes=config.ingest.max_event_bytes,
        default_tenant=config.ingest.default_tenant,
        limits=config.ingest.limits.limits(),
    )
    if isinstance(decoded, Invalid):
        raise MailstreamError(
            f"not sent: ingest would dead-letter this event ({decoded.code}): {decoded.reason}"
        )
    if not config.tenancy().known(decoded.tenant_id):
        raise MailstreamError(
            f"not sent: tenant {decoded.tenant_id!r} is not configured under tenants: and"
            " ingest would dead-letter the event (unknown_tenant)"
        )
    return event


async def _emit(config: Config, event: dict[str, Any]) -> None:
    from aiokafka.errors import KafkaError

    from mailstream.producer import EventProducer

    async with EventProducer.from_config(config) as producer:
        try:
            await producer.send_raw(str(event["user_id"]).encode(), orjson.dumps(event), wait=True)
        except KafkaError as exc:
            raise BrokerError(
                f"the broker at {config.bootstrap_servers} did not take the event: {exc}"
            ) from None


def _quiet_kafka_client() -> None:
    """A short-lived command reports an unreachable broker in one line of its own; the
    Kafka client's log lines about each failed connection would only repeat it."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def cmd_emit(args: argparse.Namespace) -> int:
    _quiet_kafka_client()
    config = _config(args)
    event = checked_event(config, args)
    asyncio.run(_emit(config, event))
    print(event["event_id"])
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    from mailstream.cli.loadgen import run_loadgen
    from mailstream.producer import EventProducer

    config = _config(args)

    async def run() -> int:
        async with EventProducer.from_config(config, linger_ms=5) as producer:
            return await run_loadgen(
                producer,
                rate=args.rate,
                users=args.users,
                count=args.count,
                duration=args.duration,
                duplicates=args.duplicates,
                malformed=args.malformed,
                seed=args.seed,
            )

    try:
        sent = asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    print(f"sent {sent} events")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from mailstream.kafka.access import kafka_access
    from mailstream.kafka.dead_letters import read_dead_letters

    _quiet_kafka_client()
    config = _config(args)
    asyncio.run(kafka_access(config).check())  # a refused password, say, in one line
    for letter in asyncio.run(read_dead_letters(config, limit=args.limit, idle=args.idle)):
        sys.stdout.buffer.write(orjson.dumps(letter) + b"\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mailstream.cli.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailstream", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--config", help=f"path to mailstream.yaml (default: ${CONFIG_ENV}, else built-in defaults)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="validate a config file and the templates")
    p.add_argument("file", nargs="?", help="the file to check (default: --config)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("broker", help="run the embedded broker and create the topics")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run a worker until SIGTERM or Ctrl-C.",
        epilog="exit codes: 1 the broker stayed unreachable for broker.lost_after; 2 the"
        " broker lacks data this worker's local state was built from; 3 the worker was"
        " paused for longer than its group session allows, or (exactly_once) another"
        " worker fenced a partition it still held (start it again)",
    )
    p.add_argument("--web-port", type=int, help="override web.port")
    p.add_argument("--data-dir", help="override data_dir (each worker on a host needs its own)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("emit", help="send one event")
    p.add_argument("event_type")
    p.add_argument("--user", required=True, help="the user id (also the message key)")
    p.add_argument("--payload", help="a JSON object; for identify, the traits")
    p.add_argument("--event-id", help="default: a new UUID")
    p.add_argument("--timestamp", type=int, help="epoch milliseconds (default: now)")
    p.add_argument("--tenant", help="tenant id (default: the config's default tenant)")
    p.set_defaults(func=cmd_emit)

    p = sub.add_parser("loadgen", help="send synthetic traffic")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--users", type=int, default=500, help="distinct users (default 500)")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--duplicates", type=float, default=0.0, help="share of re-sent events")
    p.add_argument("--malformed", type=float, default=0.0, help="share of malformed events")
    p.add_argument("--seed", type=int, help="random seed for a repeatable stream")
    p.set_defaults(func=cmd_loadgen)

    p = sub.add_parser("dlq", help="print dead letters as JSON lines")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--idle", type=float, default=2.0, help="stop after this long with nothing new")
    p.set_defaults(func=cmd_dlq)

    from mailstream.cli.suppress import add_suppress_parser

    add_suppress_parser(sub)

    from mailstream.cli.user_export import add_users_parser

    add_users_parser(sub)

    from mailstream.cli.render import add_render_parser

    add_render_parser(sub)

    from mailstream.bench.command import add_bench_parser
    from mailstream.cli.kafka import add_kafka_parser

    add_bench_parser(sub)
    add_kafka_parser(sub)

    p = sub.add_parser("demo", help="broker, worker and synthetic traffic; Ctrl-C stops all")
    p.add_argument("--port", type=int, default=9092, help="broker port (default 9092)")
    p.add_argument("--web-port", type=int, default=6066, help="worker web port (default 6066)")
    p.add_argument("--rate", type=float, default=100.0, help="synthetic events per second")
    p.add_argument("--users", type=int, default=300)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MailstreamError as exc:
        print(f"mailstream {args.command}: {exc}", file=sys.stderr)
        return 2
