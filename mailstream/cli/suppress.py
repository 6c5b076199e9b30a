"""``mailstream suppress``: add, remove, import and list globally suppressed addresses."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from mailstream.config.load import load_config
from mailstream.config.schema import Config
from mailstream.exceptions import MailstreamError
from mailstream.suppression.entries import REASON_SCOPES, Suppression, normalise_address, parse_csv

EPILOG = """\
examples:
  mailstream suppress add ada@example.com --reason complaint
  mailstream suppress import do-not-mail.csv        # a header row with an email column, or
                                                    # one address per line
  mailstream suppress list --json
"""


def add_suppress_parser(sub: Any) -> None:
    """Add the ``suppress`` subcommand to the ``mailstream`` command line."""
    p = sub.add_parser(
        "suppress",
        help="add, remove, import or list addresses that must never be mailed",
        description="Manage the global suppression list that every worker checks before a"
        " send. Changes reach the workers within a second or so.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    reasons = list(REASON_SCOPES)

    a = actions.add_parser("add", help="suppress addresses")
    a.add_argument("emails", nargs="+", metavar="EMAIL")
    a.add_argument("--reason", choices=reasons, default="manual", help="default: manual")
    a.set_defaults(func=cmd_add)

    a = actions.add_parser("remove", help="take addresses off the list")
    a.add_argument("emails", nargs="+", metavar="EMAIL")
    a.set_defaults(func=cmd_remove)

    a = actions.add_parser(
        "import",
        help="suppress every address of a CSV file",
        description="A first row with an `email` column is a header (a `reason` column is"
        " then read too); otherwise the first column is the address.",
    )
    a.add_argument("file", metavar="FILE.csv")
    a.add_argument(
        "--reason", choices=reasons, default="import", help="for rows without one (default: import)"
    )
    a.add_argument(
        "--skip-invalid", action="store_true", help="import the valid rows, report the others"
    )
    a.set_defaults(func=cmd_import)

    a = actions.add_parser("list", help="print the list, sorted by address")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.set_defaults(func=cmd_list)


def _config(args: argparse.Namespace) -> Config:
    """The config; a broker that refuses the connection's security (wrong password,
    untrusted certificate) stops the command here, in one line saying why."""
    from mailstream.kafka.access import kafka_access

    config = load_config(getattr(args, "config", None))
    asyncio.run(kafka_access(config).check())
    return config


def _now_ms() -> int:
    return int(time.time() * 1000)


def _addresses(raw: list[str]) -> list[str]:
    """The addresses normalised, each once; an invalid one is an error naming it."""
    found: dict[str, None] = {}
    for value in raw:
        address = normalise_address(value)
        if address is None:
            raise MailstreamError(f'"{value}" is not an email address')
        found[address] = None
    return list(found)


def _publish(args: argparse.Namespace, changes: list[tuple[str, Suppression | None]]) -> int:
    from mailstream.suppression.global_list import publish

    return asyncio.run(publish(_config(args), changes))


def cmd_add(args: argparse.Namespace) -> int:
    entry = Suppression(args.reason, "cli", _now_ms())
    count = _publish(args, [(address, entry) for address in _addresses(args.emails)])
    print(f"suppressed {count} addresses")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    count = _publish(args, [(address, None) for address in _addresses(args.emails)])
    print(f"removed {count} addresses")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MailstreamError(f"{path}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise MailstreamError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    rows, errors = parse_csv(text, default_reason=args.reason)
    for error in errors:
        print(f"{path}: {'skipped ' if args.skip_invalid else ''}{error}", file=sys.stderr)
    if errors and not args.skip_invalid:
        raise MailstreamError(
            f"{path}: {len(errors)} lines failed, so nothing was imported; fix them, or pass"
            " --skip-invalid to import the other rows"
        )
    now = _now_ms()
    source = f"import:{path.name}"
    count = _publish(
        args, [(address, Suppression(reason, source, now)) for address, reason in rows]
    )
    print(f"suppressed {count} addresses")
    if errors:
        print(f"skipped {len(errors)} invalid lines")
    return 0


def _iso(at: int) -> str:
    return datetime.fromtimestamp(at / 1000, tz=UTC).isoformat(timespec="seconds")


def cmd_list(args: argparse.Namespace) -> int:
    from mailstream.suppression.global_list import read_all

    entries = sorted(asyncio.run(read_all(_config(args))).items())
    out = sys.stdout
    if args.json:
        for address, entry in entries:
            out.buffer.write(orjson.dumps({"address": address, **entry.to_json()}) + b"\n")
        return 0
    width = max((len(address) for address, _ in entries), default=0)
    reason_width = max(len(r) for r in REASON_SCOPES)
    for address, entry in entries:
        print(
            f"{address:<{width}}  {entry.reason:<{reason_width}}  {entry.scope:<9}  "
            f"{entry.source}  {_iso(entry.at)}",
            file=out,
        )
    return 0
