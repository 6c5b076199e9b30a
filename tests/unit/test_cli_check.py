"""``mailstream check``: validate a config file and say which key is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstream.cli.main import main
from mailstream.config.load import CONFIG_ENV, ENV_OVERRIDES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's MAILSTREAM_* variables out of these tests."""
    for var in (CONFIG_ENV, *ENV_OVERRIDES):
        monkeypatch.delenv(var, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailstream.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_file_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "broker:\n  url: kafka://k1:9092\ntopics:\n  partitions: 8\n")

    code = main(["check", str(path)])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert out.startswith(f"{path}: ok\n")
    assert "kafka://k1:9092" in out
    assert "x8" in out


def test_the_file_can_come_from_the_global_config_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "web:\n  port: 7001\n")

    code = main(["--config", str(path), "check"])

    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith(f"{path}: ok\n")
    assert "http://127.0.0.1:7001" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("web:\n  port: 70000\n", "web.port: ", id="port-out-of-range"),
        pytest.param("ingest:\n  dedup_windw: 1h\n", "ingest.dedup_windw: unknown key", id="typo"),
        pytest.param("ingest:\n  dedup_window: soon\n", "ingest.dedup_window: ", id="bad-duration"),
        pytest.param("broker:\n  url: localhost:9092\n", "broker.url: ", id="url-without-kafka"),
        pytest.param("web:\n  port: [1,\n", "not valid YAML at line 3", id="invalid-yaml"),
        pytest.param("- a\n- b\n", "(top level): expected a mapping", id="not-a-mapping"),
    ],
)
def test_an_invalid_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path, text)

    code = main(["check", str(path)])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith(f"mailstream check: {path}: ")
    assert expected in err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"

    code = main(["check", str(path)])

    _, err = capsys.readouterr()
    assert code == 2
    assert f"{path}: cannot read the config file" in err


def test_an_environment_override_is_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "web:\n  port: 8080\n")
    monkeypatch.setenv("MAILSTREAM_WEB_PORT", "99999")

    code = main(["check", str(path)])

    _, err = capsys.readouterr()
    assert code == 2
    assert "web.port: " in err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([])

    out, _ = capsys.readouterr()
    assert code == 2
    assert "check" in out


def test_a_worker_with_a_bad_config_stops_at_start_naming_the_key(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = write(tmp_path, "ingest:\n  max_event_bytes: lots\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "mailstream", "--config", str(path), "worker"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert f"{path}: ingest.max_event_bytes: " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_reports_template_syntax_errors_and_missing_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "hello.j2").write_text(
        "{% block subject %}Hi{% endblock %}\n{% block text %}{{ user.email }{% endblock %}\n"
        "{% block html %}<p>Hi</p>{% endblock %}\n"
    )
    path = write(
        tmp_path,
        f"templates_dir: {templates}\n"
        "workflows:\n"
        "  greet:\n"
        "    trigger: {event: signup}\n"
        "    steps:\n"
        "      - send: hello\n"
        "      - send: goodbye\n",
    )

    code = main(["check", str(path)])

    _, err = capsys.readouterr()
    assert code == 2
    assert "template 'hello' line 2" in err
    assert "workflows.greet.steps[1].send: no template 'goodbye'" in err


def test_check_reports_a_digest_without_its_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "workflows:\n"
        "  comments:\n"
        "    trigger: {event: comment_added}\n"
        "    steps:\n"
        "      - digest: {event: comment_added, window: 1h, template: comments_digst}\n",
    )

    assert main(["check", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "workflows.comments.steps[0].digest.template: no template 'comments_digst'" in err


def test_the_shipped_templates_and_journeys_pass_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out, _ = capsys.readouterr()
    assert "welcome, abandoned_cart, order_receipt, reengagement" in out
