"""Server-rendered HTML pages: one autoescaping Jinja2 environment for the web views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

_env = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("web_templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)


def render_page(name: str, **context: Any) -> str:
    return _env.get_template(name).render(**context)
