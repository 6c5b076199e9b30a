"""Trust between the workers of one deployment: the cluster secret, and what it signs.

Every worker holds the same secret (``cluster.secret_env``). With it a worker signs:

- the internal commands it writes (send commands, webhook commands): the signature is
  the last field of the JSON object, ``"mailstream_sig":"v1.<hex>"``, an HMAC-SHA256 of
  the command's purpose, its Kafka key and the object without that field, byte for byte.
  The agents that obey commands verify it first; a message anyone else wrote to those
  topics is dead-lettered, never sent.
- the user lookups it forwards to another worker: ``X-Mailstream-Cluster`` carries the
  time, a nonce and an HMAC of the method, path and query; the receiving worker checks
  it (constant time, within ``max_age``, each nonce once) in place of the admin token,
  which never leaves the worker it was sent to. The answer is signed back over the
  nonce, the status and the body, so that only a holder of the secret can answer.

Pure: the caller passes the time and the nonce; nothing here reads the environment but
``cluster_key``, and the secret is never part of a repr or a message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping

from mailstream.exceptions import ConfigError

SIGNATURE_FIELD = "mailstream_sig"
SCHEME = "v1"
REQUEST_HEADER = "X-Mailstream-Cluster"
RESPONSE_HEADER = "X-Mailstream-Cluster-Answer"
MIN_SECRET_CHARS = 32
SEND_COMMAND = "send"
WEBHOOK_COMMAND = "webhook"
# The signed field, last in the object: ,"mailstream_sig":"v1.<64 hex digits>"}
_SEAL = re.compile(rb',"' + SIGNATURE_FIELD.encode() + rb'":"v1\.([0-9a-f]{64})"\}\Z')
_NONCE = re.compile(r"^[0-9A-Za-z_-]{16,64}$")
# Nonces of accepted requests, remembered until they are too old to be accepted again.
NONCES_KEPT = 10_000

UNSIGNED = "unsigned: not written by a worker of this deployment (no cluster signature)"
ALTERED = (
    "the cluster signature does not match: the command was altered, moved to another key,"
    " or signed with another cluster secret"
)


class ClusterKey:
    """The cluster secret, and the signatures made with it."""

    def __init__(self, secret: str | bytes) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret

    def __repr__(self) -> str:
        return "ClusterKey(<secret>)"

    def _mac(self, *parts: bytes) -> str:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in parts:
            # length-prefixed, so that no two different part lists sign alike
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.hexdigest()

    # ---- internal commands -------------------------------------------------------------

    def seal(self, purpose: str, key: bytes, command: bytes) -> bytes:
        """``command`` (an encoded JSON object) with its signature as the last field."""
        if not (command.startswith(b"{") and command.endswith(b"}")) or command == b"{}":
            raise ValueError("a command is an encoded, non-empty JSON object")
        digest = self._mac(purpose.encode(), key, command)
        return command[:-1] + b',"%s":"%s.%s"}' % (
            SIGNATURE_FIELD.encode(),
            SCHEME.encode(),
            digest.encode(),
        )

    def unseal(self, purpose: str, key: bytes | None, value: bytes | None) -> bytes | str:
        """The command as it was signed (without the signature), or why it is not to be
        obeyed (for the dead-letter topic)."""
        raw = value or b""
        found = _SEAL.search(raw)
        if found is None:
            return UNSIGNED
        command = raw[: found.start()] + b"}"
        expected = self._mac(purpose.encode(), key or b"", command)
        if not hmac.compare_digest(expected.encode(), found.group(1)):
            return ALTERED
        return command

    # ---- forwarded requests ------------------------------------------------------------

    def request_headers(self, method: str, path_qs: str, now: float, nonce: str) -> dict[str, str]:
        """The one header a forwarded request carries instead of any caller credential."""
        t = int(now)
        digest = self._mac(
            b"request", method.upper().encode(), path_qs.encode(), b"%d" % t, nonce.encode()
        )
        return {REQUEST_HEADER: f"t={t},n={nonce},{SCHEME}={digest}"}

    def check_request(
        self,
        method: str,
        path_qs: str,
        header: str | None,
        now: float,
        max_age: float,
        seen: NonceGuard | None = None,
    ) -> str | None:
        """None when ``header`` signs this request, fresh and (given ``seen``) not seen
        before; else why not."""
        parsed = _parse(header)
        if parsed is None:
            return "no cluster signature"
        t, nonce, given = parsed
        if abs(now - t) > max_age:
            return f"the cluster signature is {abs(now - t):.0f}s old, over {max_age:g}s"
        digest = self._mac(
            b"request", method.upper().encode(), path_qs.encode(), b"%d" % t, nonce.encode()
        )
        if not hmac.compare_digest(digest.encode(), given.encode()):
            return "the cluster signature does not match"
        if seen is not None and not seen.first(nonce, now, max_age):
            return "the cluster signature was used before"
        return None

    def answer_header(self, nonce: str, status: int, body: bytes) -> dict[str, str]:
        """Signs an answer to a forwarded request: the asker knows it came from a member."""
        digest = self._mac(b"answer", nonce.encode(), b"%d" % status, hashlib.sha256(body).digest())
        return {RESPONSE_HEADER: f"{SCHEME}={digest}"}

    def answer_ok(self, nonce: str, status: int, body: bytes, header: str | None) -> bool:
        expected = self.answer_header(nonce, status, body)[RESPONSE_HEADER]
        return header is not None and hmac.compare_digest(expected.encode(), header.encode())


def request_nonce(header: str | None) -> str | None:
    parsed = _parse(header)
    return parsed[1] if parsed is not None else None


def _parse(header: str | None) -> tuple[int, str, str] | None:
    if not header:
        return None
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    t, nonce, given = fields.get("t", ""), fields.get("n", ""), fields.get(SCHEME, "")
    if not t.isdigit() or len(t) > 12 or not _NONCE.match(nonce) or len(given) != 64:
        return None
    return int(t), nonce, given


class NonceGuard:
    """The nonces of accepted requests, each kept for ``max_age``: a captured forwarded
    request is not accepted twice. Bounded: the oldest are forgotten first."""

    def __init__(self, kept: int = NONCES_KEPT) -> None:
        self.kept = kept
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first(self, nonce: str, now: float, max_age: float) -> bool:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at >= now - 2 * max_age and len(self._seen) < self.kept:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def cluster_key(var: str, env: Mapping[str, str]) -> ClusterKey:
    """The deployment's cluster secret from ``$var`` (``cluster.secret_env``); it must be
    set, long enough, and the same on every worker."""
    secret = env.get(var) or ""
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"cluster.secret_env: set ${var} to a random secret of {MIN_SECRET_CHARS} or more"
            " characters, the same on every worker; it signs the commands workers write to"
            " internal topics and the requests they forward to each other"
            " (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return ClusterKey(secret)
