"""Test traffic with known duplicates and malformed events, and a plain replay oracle."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

BASE_TS = 1_780_000_000_000
TIMEZONES = ("Europe/Paris", "America/New_York", "Asia/Kolkata", "UTC")


def _malformed(rng: random.Random, user: str, ts: int) -> tuple[bytes | None, bytes, str]:
    ok = {
        "event_id": uuid.uuid4().hex,
        "event_type": "page_viewed",
        "user_id": user,
        "timestamp": ts,
        "payload": {},
    }
    kind = rng.randrange(10)
    key: bytes | None = user.encode()
    if kind == 0:
        return key, b'{"event_id": "x", "event_type": ', "not_json"
    if kind == 1:
        return key, b'["page_viewed", 1]', "not_object"
    if kind == 2:
        del ok["event_id"]
        return key, orjson.dumps(ok), "missing_field"
    if kind == 3:
        ok["timestamp"] = "2026-01-01T00:00:00Z"
        return key, orjson.dumps(ok), "wrong_type"
    if kind == 4:
        ok["timestamp"] = ts // 1000
        return key, orjson.dumps(ok), "bad_timestamp"
    if kind == 5:
        ok.update(event_type="identify", payload={"timezone": "Atlantis/Capital"})
        return key, orjson.dumps(ok), "bad_timezone"
    if kind == 6:
        ok.update(event_type="identify", payload={"email": "not an address"})
        return key, orjson.dumps(ok), "bad_email"
    if kind == 7:
        ok["payload"] = {"blob": "x" * 70_000}
        return key, orjson.dumps(ok), "too_large"
    if kind == 8:
        return b"someone-else", orjson.dumps(ok), "key_mismatch"
    ok["payload"] = ["not", "an", "object"]
    return key, orjson.dumps(ok), "wrong_type"


@dataclass
class Traffic:
    messages: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)  # in produce order, dups included
    malformed: list[tuple[bytes, str]] = field(default_factory=list)  # (value, reason code)
    duplicates: int = 0

    @property
    def users(self) -> set[str]:
        return {e["user_id"] for e in self.valid}


def make_traffic(
    seed: int,
    users: int,
    count: int,
    duplicates: float,
    malformed: float,
    tenants: tuple[str | None, ...] = (None,),
) -> Traffic:
    rng = random.Random(seed)
    t = Traffic()
    sent: list[tuple[bytes, bytes, dict[str, Any]]] = []
    types = ("page_viewed", "product_viewed", "cart_updated", "order_completed", "signup")
    for i in range(count):
        ts = BASE_TS + i * 7 + rng.randrange(5)
        roll = rng.random()
        user = f"user-{rng.randrange(users)}"
        if roll < malformed:
            key, value, code = _malformed(rng, user, ts)
            t.messages.append((key, value))
            t.malformed.append((value, code))
            continue
        if sent and roll < malformed + duplicates:
            key, value, event = rng.choice(sent)
            t.messages.append((key, value))
            t.valid.append(event)
            t.duplicates += 1
            continue
        if rng.random() < 0.15:
            traits: dict[str, Any] = {}
            if rng.random() < 0.8:
                traits["email"] = f"  {user.upper()}@Example.COM "
            if rng.random() < 0.5:
                traits["first_name"] = rng.choice(("Ada", "Grace", "Linus", None))
            if rng.random() < 0.5:
                traits["timezone"] = rng.choice(TIMEZONES)
            if rng.random() < 0.5:
                traits["consent"] = {"marketing": rng.choice((True, False, None))}
            if rng.random() < 0.3:
                traits["plan"] = rng.choice(("free", "pro"))
            event_type, payload = "identify", traits
        else:
            event_type, payload = rng.choice(types), {"n": i}
        event: dict[str, Any] = {
            "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "event_type": event_type,
            "user_id": user,
            "timestamp": ts,
            "payload": payload,
        }
        tenant = rng.choice(tenants)
        if tenant is not None:
            event["tenant_id"] = tenant
        value = orjson.dumps(event)
        t.messages.append((user.encode(), value))
        t.valid.append(event)
        sent.append((user.encode(), value, event))
    return t


def replay(valid: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """What each user's state should be: the valid events in order, each event id once."""
    seen: set[tuple[str, str, str]] = set()
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for e in valid:
        tenant = e.get("tenant_id", "default")
        ident = (tenant, e["user_id"], e["event_id"])
        if ident in seen:
            continue
        seen.add(ident)
        s = state.setdefault(
            (tenant, e["user_id"]),
            {
                "tenant_id": tenant,
                "user_id": e["user_id"],
                "traits": {},
                "consent": {},
                "first_seen": None,
                "last_activity": None,
                "events": {},
                "enrollments": {},
                "entries": {},
                "suppressions": {},
                "suppression_history": [],
                "deferred_sends": [],
                "send_decisions": [],
                "deliveries": [],
                "global_suppression": None,  # no address of this traffic is listed
                "segments": {},
                "last_seen_fields": {},
            },
        )
        ts = e["timestamp"]
        s["first_seen"] = ts if s["first_seen"] is None else min(s["first_seen"], ts)
        if e["event_type"] == "identify":
            for name, value in e["payload"].items():
                if name == "consent":
                    if value is None:
                        s["consent"].clear()
                    for flag, v in (value or {}).items():
                        if v is None:
                            s["consent"].pop(flag, None)
                        else:
                            s["consent"][flag] = v
                elif value is None:
                    s["traits"].pop(name, None)
                elif name == "email":
                    s["traits"]["email"] = value.strip().lower()
                else:
                    s["traits"][name] = value
        else:
            s["last_activity"] = ts if s["last_activity"] is None else max(s["last_activity"], ts)
            s["events"][e["event_type"]] = s["events"].get(e["event_type"], 0) + 1
    return state
