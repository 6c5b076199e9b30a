"""The suppression list's pure core: address normalisation, CSV import, what each reason blocks."""

from __future__ import annotations

import pytest

from mailstream.suppression.entries import REASON_SCOPES, Suppression, normalise_address, parse_csv


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("ada@example.com", "ada@example.com", id="plain"),
        pytest.param("Ada@Example.COM", "ada@example.com", id="case"),
        pytest.param("  ada@example.com\t\n", "ada@example.com", id="outer-whitespace"),
        pytest.param("a.b+tag@mail.example.co.uk", "a.b+tag@mail.example.co.uk", id="subaddress"),
        pytest.param("ÄDA@exämple.de", "äda@exämple.de", id="unicode"),
        pytest.param("x@" + "a" * 249 + ".io", "x@" + "a" * 249 + ".io", id="254-chars"),
        pytest.param("x@" + "a" * 250 + ".io", None, id="255-chars"),
        pytest.param("", None, id="empty"),
        pytest.param("   ", None, id="blank"),
        pytest.param("ada.example.com", None, id="no-at"),
        pytest.param("ada@@example.com", None, id="two-ats"),
        pytest.param("a@b@example.com", None, id="two-ats-apart"),
        pytest.param("@example.com", None, id="no-local-part"),
        pytest.param("ada@", None, id="no-domain"),
        pytest.param("ada@localhost", None, id="domain-without-dot"),
        pytest.param("ada@.com", None, id="domain-starts-with-dot"),
        pytest.param("ada@example.", None, id="domain-ends-with-dot"),
        pytest.param("ada@example..com", None, id="empty-label"),
        pytest.param("ada lovelace@example.com", None, id="inner-space"),
        pytest.param("ada@exa\tmple.com", None, id="inner-tab"),
        pytest.param("ada\x00@example.com", None, id="nul"),
        pytest.param("ada\x7f@example.com", None, id="del"),
        pytest.param("ada\u200b@example.com", None, id="zero-width-space"),
        pytest.param("ada\u00a0x@example.com", None, id="no-break-space"),
    ],
)
def test_normalise_address(raw: str, expected: str | None) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize(
    ("text", "rows", "errors"),
    [
        pytest.param(
            "ada@example.com\nbob@example.com\n",
            [("ada@example.com", "import"), ("bob@example.com", "import")],
            [],
            id="no-header",
        ),
        pytest.param(
            "ada@example.com,complaint\n",
            [("ada@example.com", "import")],
            [],
            id="no-header-ignores-other-columns",
        ),
        pytest.param(
            "name,Email\nAda,ada@example.com\nBob, BOB@Example.com \n",
            [("ada@example.com", "import"), ("bob@example.com", "import")],
            [],
            id="header-email-not-first",
        ),
        pytest.param(
            " EMAIL ,Reason\nada@example.com,complaint\nbob@example.com, Unsubscribe\n"
            "cy@example.com,\n",
            [
                ("ada@example.com", "complaint"),
                ("bob@example.com", "unsubscribe"),
                ("cy@example.com", "import"),
            ],
            [],
            id="reason-column",
        ),
        pytest.param(
            "email,reason\nada@example.com,bored\nbob@example.com,manual\n",
            [("bob@example.com", "manual")],
            [
                'line 2: reason "bored" is not one of hard_bounce, complaint, manual, import,'
                " unsubscribe"
            ],
            id="bad-reason",
        ),
        pytest.param(
            "\ufeffemail\nada@example.com\n",
            [("ada@example.com", "import")],
            [],
            id="bom-header",
        ),
        pytest.param("\ufeffada@example.com\n", [("ada@example.com", "import")], [], id="bom"),
        pytest.param(
            "\n\nada@example.com\n\n  \n,\nbob@example.com",
            [("ada@example.com", "import"), ("bob@example.com", "import")],
            [],
            id="blank-lines",
        ),
        pytest.param(
            "email,reason\nada@example.com,complaint\nbob@example.com,manual\n"
            "ADA@example.com ,hard_bounce\n",
            [("bob@example.com", "manual"), ("ada@example.com", "hard_bounce")],
            [],
            id="duplicates-keep-last",
        ),
        pytest.param(
            'email,note\n"ada@example.com","says ""hi"", twice"\n"bob@example.com","a\nb"\n'
            "nope,x\n",
            [("ada@example.com", "import"), ("bob@example.com", "import")],
            ['line 5: "nope" is not an email address'],
            id="quoted-fields-and-multiline",
        ),
        pytest.param(
            "email\r\nada@example.com\r\n\r\nfoo\r\nbob@@example.com\r\n,x\r\nok@example.com\r\n",
            [("ada@example.com", "import"), ("ok@example.com", "import")],
            [
                'line 4: "foo" is not an email address',
                'line 5: "bob@@example.com" is not an email address',
                "line 6: no email address",
            ],
            id="invalid-rows-crlf",
        ),
        pytest.param(
            "name,email\nAda\n",
            [],
            ["line 2: no email address"],
            id="short-row",
        ),
        pytest.param("", [], [], id="empty"),
    ],
)
def test_parse_csv(text: str, rows: list[tuple[str, str]], errors: list[str]) -> None:
    assert parse_csv(text) == (rows, errors)


def test_parse_csv_default_reason() -> None:
    assert parse_csv("email,reason\na@example.com,\n", default_reason="manual") == (
        [("a@example.com", "manual")],
        [],
    )
    with pytest.raises(ValueError, match="is not one of"):
        parse_csv("a@example.com\n", default_reason="nope")


BLOCKS = {
    ("hard_bounce", "transactional"): True,
    ("hard_bounce", "marketing"): True,
    ("complaint", "transactional"): True,
    ("complaint", "marketing"): True,
    ("manual", "transactional"): True,
    ("manual", "marketing"): True,
    ("import", "transactional"): True,
    ("import", "marketing"): True,
    ("unsubscribe", "transactional"): False,
    ("unsubscribe", "marketing"): True,
}


def test_every_reason_is_covered() -> None:
    assert {reason for reason, _ in BLOCKS} == set(REASON_SCOPES)


@pytest.mark.parametrize(("reason", "category"), sorted(BLOCKS))
def test_blocks(reason: str, category: str) -> None:
    entry = Suppression(reason, "cli", 1_700_000_000_000)
    assert entry.blocks(category) is BLOCKS[(reason, category)]
    assert entry.scope == ("marketing" if reason == "unsubscribe" else "all")


def test_blocks_rejects_an_unknown_category() -> None:
    with pytest.raises(ValueError, match="category"):
        Suppression("manual", "cli", 0).blocks("newsletter")


def test_unknown_reason_is_rejected() -> None:
    with pytest.raises(ValueError, match="reason 'bored'"):
        Suppression("bored", "cli", 0)


@pytest.mark.parametrize("reason", sorted(REASON_SCOPES))
def test_encode_decode_round_trip(reason: str) -> None:
    entry = Suppression(reason, "import:list ü.csv", 1_700_000_000_123)
    assert Suppression.decode(entry.encode()) == entry
    assert entry.to_json() == {
        "reason": reason,
        "source": "import:list ü.csv",
        "at": 1_700_000_000_123,
        "scope": REASON_SCOPES[reason],
    }


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="not-object"),
        pytest.param(b'{"r": "manual", "s": "cli"}', id="no-time"),
        pytest.param(b'{"r": "manual", "s": "cli", "a": true}', id="bool-time"),
        pytest.param(b'{"r": "manual", "s": 1, "a": 1}', id="source-not-string"),
        pytest.param(b'{"r": "bored", "s": "cli", "a": 1}', id="unknown-reason"),
    ],
)
def test_decode_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Suppression.decode(raw)
