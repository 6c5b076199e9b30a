"""Dashboard sessions: logged-out session ids are refused, a CSRF value in any script is
a refusal rather than an error, and login attempts are limited per address and overall."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
import pytest

from mailstream.web.admin_auth import SECURITY_HEADERS, AdminAuth, LoginLimiter, Revocations
from mailstream.web.sessions import SessionFeed, decode_revocation, encode_revocation

TOKEN = "an-admin-token-long-enough"


def test_a_revoked_session_is_refused_and_others_are_not() -> None:
    auth = AdminAuth(TOKEN)
    mine, other = auth.new_session(), auth.new_session()
    session = auth.session(mine)
    assert session is not None and auth.session_ok(mine)

    auth.revocations.add(session.id, session.expires_ms)

    assert not auth.session_ok(mine)
    assert auth.session_ok(other)
    assert auth.session(mine) == session  # still well signed: revoked is another matter


def test_no_session_is_accepted_before_every_revocation_is_known() -> None:
    auth = AdminAuth(TOKEN, Revocations(complete=False))
    cookie = auth.new_session()

    assert not auth.session_ok(cookie)
    auth.revocations.complete = True
    assert auth.session_ok(cookie)


def test_a_session_ends_twelve_hours_after_it_was_issued() -> None:
    auth = AdminAuth(TOKEN)
    session = auth.session(auth.new_session())
    assert session is not None
    ends_in = session.expires_ms / 1000 - time.time()
    assert 12 * 3600 - 5 < ends_in <= 12 * 3600


def test_revocations_are_forgotten_once_the_session_would_have_expired() -> None:
    revoked = Revocations()
    revoked.add("a", 1_000)
    revoked.add("b", 5_000)

    assert revoked.forget_expired(2_000) == 1
    assert "a" not in revoked and "b" in revoked


@pytest.mark.parametrize(
    ("cookie", "form"),
    [
        pytest.param("é", "é", id="non-ascii-both"),
        pytest.param("ok", "ü", id="non-ascii-form"),
        pytest.param("\u202e", "x", id="non-ascii-cookie"),
        pytest.param("x", SimpleNamespace(filename="f"), id="file-upload"),
        pytest.param("x", None, id="missing"),
    ],
)
def test_a_csrf_value_in_any_script_is_refused_not_an_error(cookie: str, form: object) -> None:
    assert AdminAuth(TOKEN).csrf_ok(cookie, form) is False


def test_a_non_text_token_is_refused() -> None:
    auth = AdminAuth(TOKEN)
    assert not auth.token_matches(SimpleNamespace(filename="f"))
    assert not auth.token_matches("é" * 20)
    assert auth.token_matches(TOKEN)


def test_a_client_gets_its_attempts_a_minute_then_waits() -> None:
    limiter = LoginLimiter(per_client=3, overall=100)
    assert [limiter.attempt("10.0.0.1", 0.0) for _ in range(3)] == [0, 0, 0]

    wait = limiter.attempt("10.0.0.1", 0.0)

    assert wait == 20  # one attempt comes back every 60/3 s
    assert limiter.attempt("10.0.0.2", 0.0) == 0  # another address is not held up
    assert limiter.attempt("10.0.0.1", 20.0) == 0


def test_all_clients_together_are_limited_too() -> None:
    limiter = LoginLimiter(per_client=5, overall=4)
    allowed = [limiter.attempt(f"10.0.0.{n}", 0.0) for n in range(4)]

    assert allowed == [0, 0, 0, 0]
    assert limiter.attempt("10.0.0.99", 0.0) == 15
    # the refused client was not charged: once the overall limit allows, it goes
    assert limiter.attempt("10.0.0.99", 15.0) == 0


def test_a_thousand_guesses_in_a_second_get_a_handful_through() -> None:
    limiter = LoginLimiter(per_client=10, overall=60)
    through = sum(1 for n in range(1000) if limiter.attempt("attacker", n / 1000) == 0)

    assert through == 10


def test_a_right_token_does_not_count_against_the_client() -> None:
    limiter = LoginLimiter(per_client=2, overall=100)
    for _ in range(5):
        assert limiter.attempt("me", 0.0) == 0
        limiter.succeeded("me")


def test_the_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = LoginLimiter(per_client=1, overall=10_000, max_clients=3)
    for n in range(10):
        limiter.attempt(f"10.0.0.{n}", 0.0)

    assert len(limiter._clients) == 3


def test_the_security_headers_forbid_frames_scripts_and_sniffing() -> None:
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no scripts at all
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["Referrer-Policy"]


def test_a_revocation_record_round_trips_and_junk_is_skipped() -> None:
    auth = AdminAuth(TOKEN)
    session = auth.session(auth.new_session())
    assert session is not None
    key, value = encode_revocation(session)

    assert decode_revocation(key, value) == (session.id, session.expires_ms)
    assert decode_revocation(None, value) is None
    assert decode_revocation(key, None) is None
    assert decode_revocation(key, b"{not json") is None
    assert decode_revocation(key, orjson.dumps({"until": "soon"})) is None
    assert decode_revocation(b"\xff", value) is None


async def test_the_feed_revokes_here_at_once_once_the_broker_has_the_record() -> None:
    published: list[tuple[bytes, bytes]] = []

    async def publish(key: bytes, value: bytes) -> None:
        published.append((key, value))

    auth = AdminAuth(TOKEN)
    feed = SessionFeed("127.0.0.1:1", "mailstream.sessions", auth.revocations, publish)
    auth.revocations.complete = True
    cookie = auth.new_session()
    session = auth.session(cookie)
    assert session is not None

    await feed.revoke(session)

    assert published == [encode_revocation(session)]
    assert not auth.session_ok(cookie)


async def test_a_logout_the_broker_did_not_take_revokes_nothing() -> None:
    async def publish(key: bytes, value: bytes) -> None:
        raise ConnectionError("broker gone")

    auth = AdminAuth(TOKEN)
    feed = SessionFeed("127.0.0.1:1", "mailstream.sessions", auth.revocations, publish)
    auth.revocations.complete = True
    session = auth.session(auth.new_session())
    assert session is not None

    with pytest.raises(ConnectionError):
        await feed.revoke(session)
    assert session.id not in auth.revocations


def test_the_feed_applies_records_and_skips_expired_ones() -> None:
    revoked = Revocations()
    feed = SessionFeed("127.0.0.1:1", "t", revoked, publish=None)  # type: ignore[arg-type]

    def record(key: bytes, until: int) -> SimpleNamespace:
        value = orjson.dumps({"until": until})
        return SimpleNamespace(key=key, value=value, topic="t", partition=0, offset=0)

    feed.apply([record(b"old", 1_000), record(b"live", 9_000), record(b"", 9_000)], 5_000)

    assert "live" in revoked and "old" not in revoked and len(revoked) == 1
    assert not revoked.complete  # a feed starts incomplete until it has read the topic


@pytest.mark.parametrize(
    ("web", "key"),
    [
        ({"login_attempts_per_client": 0}, "web.login_attempts_per_client"),
        ({"login_attempts_overall": "many"}, "web.login_attempts_overall"),
        ({"cookie_secure": "maybe"}, "web.cookie_secure"),
        ({"header_timeout": "0s"}, "web.header_timeout"),
    ],
)
def test_a_bad_web_setting_names_its_key(web: dict[str, object], key: str) -> None:
    from mailstream.config.load import parse_config
    from mailstream.exceptions import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"web": web}, "mailstream.yaml", env={})

    assert f"mailstream.yaml: {key}: " in str(info.value)
