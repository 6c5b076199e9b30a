"""Server-rendered HTML pages: one autoescaping Jinja2 environment for the web views."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

_env = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("html")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)


def when(ms: Any) -> str:
    """Epoch milliseconds as a UTC time to read; anything else as it is."""
    if isinstance(ms, int) and not isinstance(ms, bool) and 0 < ms < 10**14:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "-" if ms is None else str(ms)


_env.filters["when"] = when


def render_page(name: str, **context: Any) -> str:
    return _env.get_template(name).render(**context)
