"""``mailstream render``: the three parts on stdout or the HTML in a file, and bad JSON named."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mailstream.cli.render import add_render_parser, cmd_render
from mailstream.exceptions import MailstreamError
from mailstream.workflows.template_files import TemplateError

USER = '{"email": "ada@example.com", "first_name": "Ada"}'


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_render_parser(sub)
    args = parser.parse_args(["render", *argv])
    assert args.func is cmd_render
    return cmd_render(args)


def test_prints_subject_text_and_html(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        ["cart_reminder", "--user", USER, "--context", '{"items": [{"name": "Mug", "qty": 2}]}']
    )

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert "template  cart_reminder\n" in out
    assert "locale    default\n" in out
    assert "--- subject ---" in out
    assert "You left something in your cart\n" in out
    assert "--- text ---" in out
    assert "  - 2 x Mug" in out
    assert "--- html ---" in out
    assert "<!DOCTYPE html>" in out
    assert out.index("--- subject") < out.index("--- text") < out.index("--- html")


def test_shows_the_locale_used_and_the_one_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    run(["welcome", "--user", USER, "--locale", "fr-CA"])

    out, _ = capsys.readouterr()
    assert "locale    fr (asked for fr-CA)\n" in out
    assert "Bienvenue, Ada !" in out


def test_writes_the_html_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.html"

    code = run(
        [
            "order_receipt",
            "--user",
            USER,
            "--event",
            '{"order_id": "A-1", "total": "9.90"}',
            "--html-out",
            str(target),
        ]
    )

    out, _ = capsys.readouterr()
    html = target.read_text(encoding="utf-8")
    assert code == 0
    assert html.startswith("<!DOCTYPE html>")
    assert "<strong>A-1</strong>" in html
    assert f"written to {target} (" in out
    assert "<!DOCTYPE html>" not in out
    assert "Your receipt for order A-1" in out


def test_uses_the_templates_directory_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "note.j2").write_text(
        "{% block subject %}Note for {{ user.email }}{% endblock %}"
        "{% block text %}{{ event.what }}{% endblock %}"
        "{% block html %}<p>{{ event.what }}</p>{% endblock %}",
        encoding="utf-8",
    )

    run(["note", "--user", USER, "--event", '{"what": "<hi>"}', "--templates", str(tmp_path)])

    out, _ = capsys.readouterr()
    assert "Note for ada@example.com\n" in out
    assert "\n<hi>\n" in out
    assert "<p>&lt;hi&gt;</p>" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--user", "{"], "--user is not valid JSON: ", id="user-not-json"),
        pytest.param(["--user", "[]"], "--user must be a JSON object", id="user-array"),
        pytest.param(
            ["--user", "{}", "--event", "3"], "--event must be a JSON object", id="event-number"
        ),
        pytest.param(
            ["--user", "{}", "--context", "null"],
            "--context must be a JSON object such as '{}', got null",
            id="context-null",
        ),
        pytest.param(
            ["--user", "{}", "--context", "{'a': 1}"],
            "--context is not valid JSON",
            id="context-single-quotes",
        ),
    ],
)
def test_bad_json_names_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(MailstreamError) as info:
        run(["welcome", *argv])

    assert str(info.value).startswith(message)
    assert not isinstance(info.value, TemplateError)


def test_a_template_error_is_a_mailstream_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MailstreamError, match="template 'nope': no template 'nope' in "):
        run(["nope", "--user", USER])

    assert capsys.readouterr().out == ""


def test_an_unwritable_html_out_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "out.html"

    with pytest.raises(MailstreamError, match="--html-out: cannot write "):
        run(["welcome", "--user", USER, "--html-out", str(target)])

    assert capsys.readouterr().out == ""
