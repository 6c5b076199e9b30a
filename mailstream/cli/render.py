"""``mailstream render``: render an email template with sample data and show every part."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import orjson

from mailstream.config.load import load_config
from mailstream.exceptions import MailstreamError
from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Templates

logger = logging.getLogger(__name__)

EPILOG = """\
example:
  mailstream render cart_reminder --user '{"email": "ada@example.com", "first_name": "Ada"}' \\
      --context '{"items": [{"name": "Mug", "qty": 2}]}' --html-out /tmp/cart.html
"""


def add_render_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``render`` subcommand to the ``mailstream`` command line."""
    p = sub.add_parser(
        "render",
        help="render an email template with sample data",
        description="Render a template's subject, text and HTML parts with the data given.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("template", help="the template name, e.g. welcome (the file welcome.j2)")
    p.add_argument("--user", required=True, metavar="JSON", help="the user, a JSON object")
    p.add_argument(
        "--event", metavar="JSON", help="the triggering event, a JSON object (default: {})"
    )
    p.add_argument(
        "--context", metavar="JSON", help="the enrollment context, a JSON object (default: {})"
    )
    p.add_argument("--locale", help="e.g. fr-CA: tries welcome.fr-CA.j2, welcome.fr.j2, welcome.j2")
    p.add_argument(
        "--templates",
        metavar="DIR",
        help="the template directory (default: the config's templates_dir, else the shipped"
        f" templates in {DEFAULT_TEMPLATE_DIR})",
    )
    p.add_argument("--tenant", help="use this tenant's templates_dir (default: the default's)")
    p.add_argument(
        "--html-out", metavar="FILE", help="write the HTML part here instead of printing it"
    )
    p.set_defaults(func=cmd_render)


def _json_object(option: str, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MailstreamError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number"
        )
        raise MailstreamError(f"{option} must be a JSON object such as '{{}}', got {kind}")
    return value


def _heading(title: str) -> str:
    return f"--- {title} " + "-" * max(0, 60 - len(title))


def templates_dir(args: argparse.Namespace) -> Path:
    """``--templates``, else the config's ``templates_dir`` (the tenant's with ``--tenant``),
    else the shipped templates: the directory a worker with that config would use."""
    if args.templates:
        return Path(args.templates)
    config = load_config(getattr(args, "config", None))
    if args.tenant:
        config = config.tenant(args.tenant)
    return config.templates_dir or DEFAULT_TEMPLATE_DIR


def cmd_render(args: argparse.Namespace) -> int:
    user = _json_object("--user", args.user)
    event = _json_object("--event", args.event)
    context = _json_object("--context", args.context)
    templates = Templates(templates_dir(args))
    rendered = templates.render(
        args.template, user=user, event=event, context=context, locale=args.locale
    )
    if args.html_out:
        path = Path(args.html_out)
        try:
            path.write_text(rendered.html + "\n", encoding="utf-8")
        except OSError as exc:
            raise MailstreamError(
                f"--html-out: cannot write {path}: {exc.strerror or exc}"
            ) from None
        html = f"written to {path} ({len(rendered.html)} characters)"
    else:
        html = rendered.html
    asked = f" (asked for {args.locale})" if args.locale else ""
    print(f"template  {rendered.template}")
    print(f"version   {rendered.version}")
    print(f"locale    {rendered.locale or 'default'}{asked}")
    for title, body in (("subject", rendered.subject), ("text", rendered.text), ("html", html)):
        print()
        print(_heading(title))
        print(body)
    return 0
