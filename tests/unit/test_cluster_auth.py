"""The cluster secret: signed internal commands and signed forwarded requests."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from mailstream.core.cluster_trust import (
    ALTERED,
    REQUEST_HEADER,
    RESPONSE_HEADER,
    SEND_COMMAND,
    UNSIGNED,
    WEBHOOK_COMMAND,
    ClusterKey,
    NonceGuard,
    cluster_key,
    request_nonce,
)
from mailstream.delivery.send_command import encode_send_command, verified_send_command
from mailstream.exceptions import ConfigError

SECRET = "cluster-secret-for-the-unit-tests-0123456789"
KEY = ClusterKey(SECRET)
COMMAND = {"send_id": "s1", "user_id": "u1", "to": "ada@example.com", "subject": "Hi"}
NOW = 1_800_000_000.0
NONCE = "n0nce-0123456789abcdef"


# ---- commands --------------------------------------------------------------------------


def test_a_signed_command_reads_back_as_written() -> None:
    key, value = encode_send_command(KEY, COMMAND)
    assert key == b"u1"
    signed = verified_send_command(KEY, key, value)
    assert isinstance(signed, bytes) and orjson.loads(signed) == COMMAND
    # what consumers of the topic see: the command, plus one field
    assert orjson.loads(value) == {
        **COMMAND,
        "mailstream_sig": orjson.loads(value)["mailstream_sig"],
    }


def _forged(value: bytes) -> bytes:
    return value.replace(b"ada@example.com", b"eve@evil.test")


@pytest.mark.parametrize(
    "case,reason",
    [
        ("unsigned", UNSIGNED),  # anyone with access to the broker
        ("altered", ALTERED),  # a worker's command with another recipient
        ("other_key", ALTERED),  # moved to another user's partition
        ("other_purpose", ALTERED),  # a webhook command's signature on a send
        ("other_secret", ALTERED),  # another deployment's worker
        ("field_after", UNSIGNED),  # a field slipped in after the signature
        ("empty", UNSIGNED),
    ],
)
def test_what_no_worker_wrote_is_refused_with_the_reason(case: str, reason: str) -> None:
    key, value = encode_send_command(KEY, COMMAND)
    if case == "unsigned":
        value = orjson.dumps(COMMAND)
    elif case == "altered":
        value = _forged(value)
    elif case == "other_key":
        key = b"u2"
    elif case == "other_purpose":
        value = KEY.seal(WEBHOOK_COMMAND, key, orjson.dumps(COMMAND))
    elif case == "other_secret":
        value = encode_send_command(ClusterKey("another-deployment-secret-0123456789"), COMMAND)[1]
    elif case == "field_after":
        value = value[:-1] + b',"to":"eve@evil.test"}'
    else:
        value = b""
    assert verified_send_command(KEY, key, value) == reason


def test_the_signature_is_an_hmac_sha256_of_purpose_key_and_command() -> None:
    command = orjson.dumps(COMMAND)
    value = KEY.seal(SEND_COMMAND, b"u1", command)
    mac = hmac.new(SECRET.encode(), digestmod=hashlib.sha256)
    for part in (b"send", b"u1", command):
        mac.update(len(part).to_bytes(8, "big") + part)
    assert value == command[:-1] + b',"mailstream_sig":"v1.' + mac.hexdigest().encode() + b'"}'


def test_only_json_objects_are_sealed() -> None:
    for bad in (b"[1]", b"{}", b""):
        with pytest.raises(ValueError):
            KEY.seal(SEND_COMMAND, b"u1", bad)


# ---- forwarded requests ----------------------------------------------------------------


def test_a_forwarded_request_carries_a_signature_and_no_credential() -> None:
    headers = KEY.request_headers("GET", "/api/users/u1?full=1", NOW, NONCE)
    assert list(headers) == [REQUEST_HEADER]
    assert SECRET not in headers[REQUEST_HEADER]
    assert request_nonce(headers[REQUEST_HEADER]) == NONCE
    header = headers[REQUEST_HEADER]
    assert KEY.check_request("GET", "/api/users/u1?full=1", header, NOW + 5, 30) is None


@pytest.mark.parametrize(
    "method,path,age,secret,problem",
    [
        ("GET", "/api/users/u2?full=1", 0, SECRET, "does not match"),  # another user
        ("GET", "/api/users/u1", 0, SECRET, "does not match"),  # the query changed
        ("POST", "/api/users/u1?full=1", 0, SECRET, "does not match"),
        ("GET", "/api/users/u1?full=1", 31, SECRET, "old"),
        ("GET", "/api/users/u1?full=1", -31, SECRET, "old"),  # from the future
        ("GET", "/api/users/u1?full=1", 0, "a-member-without-the-secret-0123", "does not match"),
    ],
)
def test_a_request_signed_otherwise_is_refused(
    method: str, path: str, age: float, secret: str, problem: str
) -> None:
    header = ClusterKey(secret).request_headers("GET", "/api/users/u1?full=1", NOW, NONCE)
    found = KEY.check_request(method, path, header[REQUEST_HEADER], NOW + age, 30)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "header", [None, "", "Bearer x", "t=1,n=short,v1=00", f"t=x,n={NONCE},v1={'0' * 64}"]
)
def test_a_request_without_a_signature_is_refused(header: str | None) -> None:
    assert KEY.check_request("GET", "/api/users/u1", header, NOW, 30) == "no cluster signature"


def test_a_captured_request_is_not_accepted_twice() -> None:
    seen = NonceGuard()
    header = KEY.request_headers("GET", "/api/users/u1", NOW, NONCE)[REQUEST_HEADER]
    assert KEY.check_request("GET", "/api/users/u1", header, NOW, 30, seen) is None
    again = KEY.check_request("GET", "/api/users/u1", header, NOW + 1, 30, seen)
    assert again == "the cluster signature was used before"


def test_the_nonce_guard_forgets_old_nonces_and_stays_bounded() -> None:
    seen = NonceGuard(kept=3)
    assert seen.first("a", 0, 30) and not seen.first("a", 1, 30)
    assert seen.first("a", 61, 30)  # long expired: its request is too old to pass anyway
    for n in range(10):
        assert seen.first(f"n{n}", 62, 30)
    assert len(seen._seen) <= 3


def test_only_a_holder_of_the_secret_can_answer() -> None:
    body = b'{"user_id":"u1"}'
    header = KEY.answer_header(NONCE, 200, body)[RESPONSE_HEADER]
    assert KEY.answer_ok(NONCE, 200, body, header)
    assert not KEY.answer_ok(NONCE, 200, b'{"user_id":"eve"}', header)  # other data
    assert not KEY.answer_ok("another-nonce-0123456789", 200, body, header)  # a replayed answer
    assert not KEY.answer_ok(NONCE, 404, body, header)
    assert not KEY.answer_ok(NONCE, 200, body, None)  # a member without the secret


# ---- the secret ------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"MAILSTREAM_CLUSTER_SECRET": "too-short"}])
def test_a_missing_or_short_secret_fails_naming_the_key(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        cluster_key("MAILSTREAM_CLUSTER_SECRET", env)
    assert "cluster.secret_env" in str(caught.value)
    assert "$MAILSTREAM_CLUSTER_SECRET" in str(caught.value)
    assert "too-short" not in str(caught.value)


def test_the_secret_never_shows() -> None:
    key = cluster_key("S", {"S": SECRET})
    assert SECRET not in repr(key) and SECRET not in str(key)
