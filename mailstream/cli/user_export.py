"""``mailstream users export``: everything mailstream holds about one user, as JSON, for
an access request. A worker answers (any worker: it asks the user's owner), with the
admin token; the worker logs the export (who asked, when; never the data)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from mailstream.config.load import load_config
from mailstream.exceptions import MailstreamError


def add_users_parser(sub: Any) -> None:
    p = sub.add_parser(
        "users",
        help="export what is held about a user (an access request)",
        description="Ask a worker for everything held about a user and print it as JSON:"
        " traits, consent, activity, event counts, enrollments and their next due times,"
        " held sends, send decisions, delivery records, suppressions and their history, and"
        " the address's entry on the global suppression list.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("export", help="print everything held about USER as JSON")
    a.add_argument("user", metavar="USER")
    a.add_argument("--tenant", help="the user's tenant (default: ingest.default_tenant)")
    a.add_argument(
        "--url", help="a worker's web address (default: web.canonical_url, else web.host:port)"
    )
    a.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    config = load_config(getattr(args, "config", None))
    var = config.web.admin_token_env
    token = os.environ.get(var)
    if not token:
        raise MailstreamError(f"web.admin_token_env: set ${var} to the admin token")
    base = args.url or config.web.canonical_url or f"http://{config.web.host}:{config.web.port}"
    if not base.startswith(("http://", "https://")):
        raise MailstreamError(f"--url {base!r}: a worker's http:// or https:// address")
    query = {"full": "1", "export": "1", "tenant": args.tenant or config.ingest.default_tenant}
    url = f"{base.rstrip('/')}/api/users/{quote(args.user, safe='')}?{urlencode(query)}"
    headers = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, above
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - the operator's worker
            view = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise MailstreamError(f"{base} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MailstreamError(f"cannot reach the worker at {base}: {exc}") from None
    exported = {"exported_at": int(time.time() * 1000), "user": view}
    sys.stdout.buffer.write(orjson.dumps(exported, option=orjson.OPT_INDENT_2) + b"\n")
    return 0
