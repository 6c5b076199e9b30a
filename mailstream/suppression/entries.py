"""The global suppression list's records: why an address must not be mailed, and CSV import."""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from mailstream.core.events import normalise_email

# What each reason stops: "all" mail, or only "marketing" (receipts still go out).
REASON_SCOPES: dict[str, str] = {
    "hard_bounce": "all",
    "complaint": "all",
    "manual": "all",
    "import": "all",
    "unsubscribe": "marketing",
}
CATEGORIES = ("transactional", "marketing")
MAX_ADDRESS = 254  # RFC 5321's limit on a forward path, less the angle brackets


@dataclass(frozen=True, slots=True)
class Suppression:
    """One address's entry: the reason, who put it there and when (epoch ms)."""

    reason: str
    source: str
    at: int

    def __post_init__(self) -> None:
        if self.reason not in REASON_SCOPES:
            raise ValueError(f"reason {self.reason!r} is not one of {', '.join(REASON_SCOPES)}")

    @property
    def scope(self) -> str:
        return REASON_SCOPES[self.reason]

    def blocks(self, category: str) -> bool:
        """Whether mail of ``category`` (transactional or marketing) must not be sent."""
        if category not in CATEGORIES:
            raise ValueError(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
        return self.scope == "all" or category == self.scope

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "source": self.source, "at": self.at, "scope": self.scope}

    def encode(self) -> bytes:
        return orjson.dumps({"r": self.reason, "s": self.source, "a": self.at})

    @classmethod
    def decode(cls, raw: bytes) -> Suppression:
        """The inverse of ``encode``; ValueError says what is wrong with ``raw``."""
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("a suppression must be a JSON object")
        reason, source, at = doc.get("r"), doc.get("s"), doc.get("a")
        if not isinstance(reason, str) or not isinstance(source, str):
            raise ValueError("a suppression needs string fields r (reason) and s (source)")
        if isinstance(at, bool) or not isinstance(at, int):
            raise ValueError("a suppression needs an integer field a (epoch ms)")
        return cls(reason, source, at)


def _bad_char(ch: str) -> bool:
    # Separators (Z*) and control, format and unassigned code points (C*).
    return ch.isspace() or unicodedata.category(ch)[0] in "CZ"


def normalise_address(raw: str) -> str | None:
    """Trimmed and lower-cased, as user traits are; None when it is not a plausible address."""
    address = normalise_email(raw)
    if not address or len(address) > MAX_ADDRESS or address.count("@") != 1:
        return None
    local, domain = address.split("@")
    if not local or "." not in domain or domain[0] == "." or domain[-1] == "." or ".." in domain:
        return None
    if any(_bad_char(ch) for ch in address):
        return None
    return address


def parse_csv(text: str, default_reason: str = "import") -> tuple[list[tuple[str, str]], list[str]]:
    """(address, reason) rows and the errors, each naming its line.

    A first row with a column named ``email`` is a header; a ``reason`` column is then
    read too. Otherwise the first column is the address and every row has
    ``default_reason``. Blank lines are skipped; an address given twice keeps its last row.
    """
    if default_reason not in REASON_SCOPES:
        raise ValueError(f"reason {default_reason!r} is not one of {', '.join(REASON_SCOPES)}")
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    found: dict[str, str] = {}
    errors: list[str] = []
    email_col, reason_col = 0, None
    first = True
    rows_end = 0
    # Each record with the line it starts on; a quoted field may span lines.
    rows: list[tuple[list[str], int]] = []
    try:
        for row in reader:
            rows.append((row, rows_end + 1))
            rows_end = reader.line_num
    except csv.Error as exc:
        return [], [f"line {reader.line_num}: not valid CSV: {exc}"]
    for row, line in rows:
        if not any(cell.strip() for cell in row):
            continue
        if first:
            first = False
            names = [cell.strip().lower() for cell in row]
            if "email" in names:
                email_col = names.index("email")
                reason_col = names.index("reason") if "reason" in names else None
                continue
        cell = row[email_col].strip() if email_col < len(row) else ""
        if not cell:
            errors.append(f"line {line}: no email address")
            continue
        address = normalise_address(cell)
        if address is None:
            errors.append(f'line {line}: "{cell}" is not an email address')
            continue
        given = row[reason_col].strip() if reason_col is not None and reason_col < len(row) else ""
        reason = given.lower() if given else default_reason
        if reason not in REASON_SCOPES:
            errors.append(f'line {line}: reason "{given}" is not one of {", ".join(REASON_SCOPES)}')
            continue
        found.pop(address, None)  # the last row wins, in the last row's place
        found[address] = reason
    return list(found.items()), errors
