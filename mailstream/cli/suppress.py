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
  mailstream suppress lift user-42 --reason "asked by phone, ticket 1234"
  mailstream suppress lift ada@example.com --reason "bounced during the outage of 3 May"
"""


def add_suppress_parser(sub: Any) -> None:
    """Add the ``suppress`` subcommand to the ``mailstream`` command line."""
    p = sub.add_parser(
        "suppress",
        help="add, remove, import or list suppressed addresses; lift a user's",
        description="Manage the global suppression list that every worker checks before a"
        " send, and lift a user's own suppressions. Changes reach the workers within a"
        " second or so.",
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

    a = actions.add_parser(
        "lift",
        help="lift a user's suppressions, or an address's global entry, saying why",
        description="A user id lifts that user's own suppressions (every one, or --only"
        " one reason): a hard bounce or a complaint is lifted only this way, and the lift is"
        " kept in the user's history with the reason. An address lifts its entry on the"
        " global list.",
    )
    a.add_argument("targets", nargs="+", metavar="USER_OR_ADDRESS")
    a.add_argument("--reason", required=True, help="why: kept in the user's history")
    a.add_argument("--only", choices=reasons, help="lift only this suppression of a user")
    a.add_argument("--tenant", help="the users' tenant (default: ingest.default_tenant)")
    a.set_defaults(func=cmd_lift)

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


def cmd_lift(args: argparse.Namespace) -> int:
    from mailstream.kafka.produce_once import produce_keyed
    from mailstream.suppression.lift_requests import lift_request

    now = _now_ms()
    # every argument checked before the broker is asked anything
    addresses = _addresses([t for t in args.targets if "@" in t])
    requests = [
        lift_request(user, args.tenant, args.reason, args.only, "cli", now)
        for user in args.targets
        if "@" not in user
    ]
    config = _config(args)
    if addresses:
        from mailstream.suppression.global_list import publish

        count = asyncio.run(publish(config, [(a, None) for a in addresses]))
        print(f"lifted the global entries of {count} addresses")
    if requests:
        records = [(fb.key() or b"", fb.encode()) for fb in requests]
        asyncio.run(produce_keyed(config, config.topics.feedback, records))
        print(
            f"asked for {len(requests)} users' suppressions to be lifted; each user's page"
            " shows the lift in its history once their worker has applied it"
        )
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
