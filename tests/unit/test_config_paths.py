"""Relative paths in the config file: ``templates_dir`` (the default's and the tenants')
is relative to the file, like ``include:``, wherever the command runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mailstream.cli.main import main
from mailstream.config.load import CONFIG_ENV, ENV_OVERRIDES, load_config

NOTE = (
    "{% block subject %}Note for {{ user.email }}{% endblock %}"
    "{% block text %}hello{% endblock %}"
    "{% block html %}<p>hello</p>{% endblock %}"
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (CONFIG_ENV, *ENV_OVERRIDES):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conf/mailstream.yaml with conf/mail/note.j2 beside it; the command runs elsewhere."""
    conf = tmp_path / "conf"
    (conf / "mail").mkdir(parents=True)
    (conf / "mail" / "note.j2").write_text(NOTE, encoding="utf-8")
    (conf / "acme").mkdir()
    (conf / "mailstream.yaml").write_text(
        "templates_dir: mail\n"
        "tenants:\n"
        "  acme: {templates_dir: acme}\n"
        "workflows:\n"
        "  greet:\n"
        "    trigger: {event: signup}\n"
        "    steps:\n"
        "      - send: note\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return conf


def test_templates_dir_is_relative_to_the_config_file(layout: Path) -> None:
    config = load_config(layout / "mailstream.yaml", env={})

    assert config.templates_dir == (layout / "mail").resolve()
    assert config.tenant("acme").templates_dir == (layout / "acme").resolve()


def test_check_finds_the_templates_beside_the_config_from_another_directory(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check", str(layout / "mailstream.yaml")])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "workflows   greet" in out


def test_an_env_override_stays_relative_to_the_working_directory(
    layout: Path, tmp_path: Path
) -> None:
    config = load_config(layout / "mailstream.yaml", env={"MAILSTREAM_TEMPLATES_DIR": "here"})

    assert config.templates_dir == Path("here")


def test_a_directory_only_the_working_directory_has_is_still_used_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "mailstream.yaml"
    path.write_text("templates_dir: old_templates\n", encoding="utf-8")
    (tmp_path / "old_templates").mkdir()
    monkeypatch.chdir(tmp_path)

    with caplog.at_level(logging.WARNING, logger="mailstream.config.load"):
        config = load_config(path, env={})

    assert config.templates_dir == (tmp_path / "old_templates").resolve()
    assert "relative to the config file" in caplog.text


def test_render_uses_the_configs_templates_dir(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--config",
            str(layout / "mailstream.yaml"),
            "render",
            "note",
            "--user",
            '{"email": "ada@example.com"}',
        ]
    )

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Note for ada@example.com" in out


def test_render_uses_a_tenants_templates_dir(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (layout / "acme" / "note.j2").write_text(NOTE.replace("Note", "Acme note"), encoding="utf-8")

    main(
        [
            "--config",
            str(layout / "mailstream.yaml"),
            "render",
            "note",
            "--tenant",
            "acme",
            "--user",
            '{"email": "ada@example.com"}',
        ]
    )

    out, _ = capsys.readouterr()
    assert "Acme note for ada@example.com" in out
