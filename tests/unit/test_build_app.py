"""The app is built from a config object: importing a module does nothing, and
``build_app`` registers what the config asks for, or fails naming the missing key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailstream.app import build_app
from mailstream.config.load import parse_config
from mailstream.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "MAILSTREAM_CLUSTER_SECRET": "a-cluster-secret-of-sufficient-length-0123",
    "MAILSTREAM_ADMIN_TOKEN": "an-admin-token-of-sufficient-length",
    "MAILSTREAM_UNSUBSCRIBE_SECRET": "an-unsubscribe-secret-long-enough",
}


def test_importing_any_module_reads_no_config_and_no_environment(tmp_path: Path) -> None:
    # A config path that cannot be read and no secrets: an import that loaded the config
    # or read a secret would fail.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    env["MAILSTREAM_CONFIG"] = str(tmp_path / "missing.yaml")
    code = (
        "import importlib, pkgutil, sys\n"
        "import mailstream, agents, tables\n"
        "names = []\n"
        "for pkg in (mailstream, agents, tables):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            names.append(m.name)\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 100


def config(tmp_path: Path, **sections: object) -> object:
    raw = {"data_dir": str(tmp_path / "data"), **sections}
    return parse_config(raw, "<test>", SECRETS)


def test_the_app_has_the_agents_and_views_the_config_asks_for(tmp_path: Path) -> None:
    app, rt = build_app(config(tmp_path), SECRETS)
    agents = {agent.name for agent in app.agents.values()}
    assert {"mailstream.ingest", "mailstream.delivery", "mailstream.feedback"} <= agents
    assert "mailstream.webhooks" not in agents  # no webhook steps configured
    routes = {str(route.resource.canonical) for route in app.web.web_app.router.routes()}
    assert {"/health", "/metrics", "/api/users/{user_id}", "/login", "/"} <= routes
    assert rt.tables.webhook_calls is None


def test_a_missing_secret_fails_the_build_naming_its_key(tmp_path: Path) -> None:
    without = {k: v for k, v in SECRETS.items() if k != "MAILSTREAM_ADMIN_TOKEN"}
    with pytest.raises(ConfigError, match="web.admin_token_env"):
        build_app(config(tmp_path), without)
