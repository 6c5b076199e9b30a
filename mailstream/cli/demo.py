"""``mailstream demo``: embedded broker, one worker and synthetic traffic, stopped by Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailstream.config.load import load_config
from mailstream.kafka.embedded_broker import EmbeddedBroker
from mailstream.kafka.topics import create_topics
from mailstream.runtime.preflight import check_port_free
from mailstream.runtime.signals import stop_on_signals

DEMO_DIR = Path(".demo")


def _outcome_totals(web_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{web_url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    totals: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mailstream_events_total":
                label = sample.labels["outcome"]
            elif sample.name == "mailstream_send_commands_total":
                label = f"{sample.labels['category']} sends {sample.labels['result']}"
            elif sample.name == "mailstream_sends_total":
                label = f"{sample.labels['category']} {sample.labels['result']} by provider"
            elif sample.name == "mailstream_send_decisions_total":
                decision = {"drop": "dropped", "defer": "held"}.get(sample.labels["decision"])
                if decision is None:
                    continue
                label = f"sends {decision} ({sample.labels['reason']})"
            else:
                continue
            totals[label] = totals.get(label, 0) + int(sample.value)
    return totals


def _wait_healthy(web_url: str, worker: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with urllib.request.urlopen(f"{web_url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def run_demo(args: argparse.Namespace) -> int:
    base = load_config(args.config)
    # Before anything starts: a worker already on the web port would answer the status
    # lines in its place, and a broker already on the port would take the topics.
    check_port_free("127.0.0.1", args.web_port, "web.port", "--web-port")
    check_port_free("127.0.0.1", args.port, "the broker's port", "--port")
    # The embedded broker keeps topics in memory, so state left from a previous run
    # would not match them: every demo starts from an empty data directory.
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    env = dict(os.environ)
    env.update(
        MAILSTREAM_BROKER_URL=f"kafka://127.0.0.1:{args.port}",
        MAILSTREAM_BROKER_EMBEDDED="true",
        MAILSTREAM_DATA_DIR=str(DEMO_DIR / "worker"),
        MAILSTREAM_WEB_PORT=str(args.web_port),
        MAILSTREAM_WEB_HOST="127.0.0.1",
    )
    env.pop("MAILSTREAM_CANONICAL_URL", None)
    # Signs the one-click unsubscribe links; a demo makes its own.
    env.setdefault("MAILSTREAM_UNSUBSCRIBE_SECRET", secrets.token_urlsafe(24))
    env.setdefault("MAILSTREAM_ADMIN_TOKEN", secrets.token_urlsafe(18))
    env.setdefault("MAILSTREAM_CLUSTER_SECRET", secrets.token_urlsafe(32))
    if args.config:
        env["MAILSTREAM_CONFIG"] = os.path.abspath(args.config)
    web_url = f"http://127.0.0.1:{args.web_port}"
    # The broker and each child run in a session of their own: Ctrl-C reaches the demo
    # alone, which stops the traffic, then the worker, and the broker last. Stopped all
    # at once, the worker spent 10 s logging ~1,600 errors about the broker it lost.
    broker = EmbeddedBroker(
        "127.0.0.1", args.port, log_path=DEMO_DIR / "broker.log", own_session=True
    )
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    interrupted = stop_on_signals()
    try:
        print(f"starting the embedded broker on 127.0.0.1:{args.port} ...", flush=True)
        broker.start()
        asyncio.run(create_topics(base, broker.bootstrap_servers))
        print("starting a worker (log: .demo/worker.log) ...", flush=True)
        cmd = [sys.executable, "-m", "mailstream", "worker"]
        with open(DEMO_DIR / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        children.append(("worker", worker))
        if not _wait_healthy(web_url, worker, 90):
            print("the worker did not become healthy; see .demo/worker.log", file=sys.stderr)
            return 1
        print(
            f"sending synthetic traffic: {args.rate:.0f} events/s over {args.users} users, "
            "with some duplicates and malformed events",
            flush=True,
        )
        gen = [
            sys.executable,
            "-m",
            "mailstream",
            "loadgen",
            "--rate",
            str(args.rate),
            "--users",
            str(args.users),
            "--duplicates",
            "0.03",
            "--malformed",
            "0.01",
        ]
        with open(DEMO_DIR / "loadgen.log", "ab") as log:
            loadgen = subprocess.Popen(
                gen, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        children.append(("loadgen", loadgen))
        print(
            f"\n  dashboard {web_url}/  (admin token: {env['MAILSTREAM_ADMIN_TOKEN']})\n"
            f"  health    {web_url}/health\n"
            f"  a user    {web_url}/users/user-1\n"
            f"  metrics   {web_url}/metrics\n"
            f"  sent      {base.providers.outbox.directory}/ (one .eml file per email)\n"
            f"  DLQ       MAILSTREAM_BROKER_URL=kafka://127.0.0.1:{args.port} "
            f"{Path(sys.executable).parent / 'mailstream'} dlq\n"
            "\nCtrl-C stops everything.\n",
            flush=True,
        )
        while not interrupted.is_set():
            for name, child in children:
                if child.poll() is not None:
                    print(
                        f"the {name} exited with {child.returncode}; see .demo/{name}.log",
                        file=sys.stderr,
                    )
                    return 1
            if interrupted.wait(5):
                break
            try:
                totals = _outcome_totals(web_url)
                summary = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
                print(f"[{time.strftime('%H:%M:%S')}] {summary}", flush=True)
            except OSError:
                pass
        return 0
    finally:
        print("stopping ...", flush=True)
        # One after the other, the last started first: the traffic, the worker (which
        # still has its broker to stop against), then the broker.
        for _, child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        broker.stop()
        print("stopped.", flush=True)
