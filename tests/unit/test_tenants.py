"""Tenants: config inheritance and its errors, the events/s and sends/day quotas, and fair
delivery across tenants, with a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from mailstream.config.load import parse_config
from mailstream.core.ingest_batch import (
    DEAD_LETTERED,
    PROCESSED,
    THROTTLED,
    IngestSettings,
    ingest_batch,
)
from mailstream.core.tenants import OTHER_LABEL, EventRates, Quota, Tenancy, over_daily_quota
from mailstream.delivery.fair_share import CHOSEN, LANE_DONE, SKIP, STOP, TENANT_WAIT, FairPacer
from mailstream.delivery.pacing import GO, RATE_WAIT, Pacer
from mailstream.delivery.state_machine import QueueKey, accept, delivery_key, rank_bounds
from mailstream.exceptions import ConfigError
from mailstream.kafka.records import RawMessage

DAY = date(2025, 3, 1)


# --- config -------------------------------------------------------------------------


BASE: dict[str, Any] = {
    "policy": {"quiet_hours": {"start": "21:00", "end": "08:00"}, "default_timezone": "UTC"},
    "delivery": {"from_address": "Shop <shop@example.com>", "rate_limit": 10},
}


def test_a_tenant_section_overrides_key_by_key_and_inherits_the_rest() -> None:
    config = parse_config(
        {
            **BASE,
            "tenants": {
                "acme": {
                    "policy": {"quiet_hours": {"start": "22:00"}},
                    "delivery": {"from_address": "Acme <hi@acme.test>"},
                    "workflows": {"welcome": None},
                    "quota": {"events_per_second": 5, "sends_per_day": 100, "rate_share": 0.5},
                },
                "globex": {},
            },
        },
        env={},
    )
    acme, globex = config.tenant("acme"), config.tenant("globex")
    assert acme.policy.quiet_hours is not None and globex.policy.quiet_hours is not None
    assert (acme.policy.quiet_hours.start, acme.policy.quiet_hours.end) == ("22:00", "08:00")
    assert globex.policy.quiet_hours.start == "21:00"
    assert acme.delivery.from_address == "Acme <hi@acme.test>"
    assert acme.delivery.rate_limit == 10  # not overridable: the deployment's
    assert "welcome" not in {w.name for w in acme.compiled_workflows()}
    assert "welcome" in {w.name for w in globex.compiled_workflows()}
    assert config.tenant("nobody") is config
    tenancy = config.tenancy()
    assert tenancy.names == ["acme", "default", "globex"]
    assert tenancy.quota("acme") == Quota(5, 100, "defer", 0.5)
    assert not tenancy.known("initech")  # configured tenants: the rest are refused


@pytest.mark.parametrize(
    ("tenants", "message"),
    [
        pytest.param(
            {"acme": {"policy": {"quiet_hours": {"start": "25:00"}}}},
            "tenants.acme.policy.quiet_hours.start: ",
            id="bad-value-inherited-shape",
        ),
        pytest.param(
            {"acme": {"policy": {"quiet_hourz": {}}}},
            "tenants.acme.policy.quiet_hourz: unknown key",
            id="unknown-key-in-section",
        ),
        pytest.param(
            {"acme": {"quota": {"sends_per_dy": 5}}},
            "tenants.acme.quota.sends_per_dy: unknown key",
            id="unknown-quota-key",
        ),
        pytest.param(
            {"acme": {"quota": {"rate_share": 1.5}}},
            "tenants.acme.quota.rate_share: ",
            id="share-over-one",
        ),
        pytest.param(
            {"acme": {"delivery": {"rate_limit": 100}}},
            "tenants.acme.delivery.rate_limit: set for the whole deployment",
            id="deployment-wide-key",
        ),
        pytest.param(
            {"acme": {"sampling": {}}}, "tenants.acme.sampling: unknown key", id="not-per-tenant"
        ),
        pytest.param(
            {"acme": {"workflows": {"w": {"trigger": {"event": "x"}, "stepz": []}}}},
            "tenants.acme.workflows.w.stepz",
            id="bad-workflow",
        ),
        pytest.param({"a b": {}}, "tenants.a b", id="bad-tenant-id"),
    ],
)
def test_a_bad_tenant_key_fails_naming_its_path(tenants: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "tenants": tenants}, env={})
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("raw", "allowed"),
    [
        pytest.param({}, True, id="no-tenants-any-allowed"),
        pytest.param({"tenants": {"acme": {}}}, False, id="tenants-refuse-others"),
        pytest.param(
            {"tenants": {"acme": {}}, "ingest": {"unknown_tenants": "allow"}}, True, id="allow"
        ),
        pytest.param({"ingest": {"unknown_tenants": "dead_letter"}}, False, id="refuse"),
    ],
)
def test_unknown_tenants(raw: dict[str, Any], allowed: bool) -> None:
    tenancy = parse_config(raw, env={}).tenancy()
    assert tenancy.known("initech") is allowed
    assert tenancy.known("default")
    assert tenancy.label("initech") == OTHER_LABEL
    assert tenancy.lane("initech") == "default"


# --- events per second ----------------------------------------------------------------


def event(n: int, tenant: str | None) -> RawMessage:
    doc = f'{{"event_id":"e{n}","event_type":"page_view","user_id":"u1","timestamp":1700000000000'
    doc += f',"tenant_id":"{tenant}"}}' if tenant else "}"
    return RawMessage("events", 0, n, b"u1", doc.encode())


@pytest.mark.parametrize(
    ("rate", "events", "gap_s", "processed"),
    [
        pytest.param(5.0, 20, 0.0, 5, id="a-burst-takes-the-bucket"),
        pytest.param(5.0, 20, 0.2, 20, id="at-the-rate-all-pass"),
        pytest.param(5.0, 20, 0.1, 5 + 10 - 1, id="at-twice-the-rate-about-half"),
        pytest.param(None, 20, 0.0, 20, id="no-quota"),
    ],
)
def test_events_per_second(rate: float | None, events: int, gap_s: float, processed: int) -> None:
    tenancy = Tenancy("default", {"acme": Quota(events_per_second=rate)}, allow_unknown=False)
    rates = EventRates(tenancy)
    settings = IngestSettings(1 << 16, "default", 3600.0, 100, tenancy=tenancy)
    counts: dict[tuple[str, str, str], int] = {}
    for n in range(events):
        now_ms = 1_700_000_000_000 + int(n * gap_s * 1000)
        result = ingest_batch([event(n, "acme")], lambda p, k: None, now_ms, settings, None, rates)
        for k, v in result.counts.items():
            counts[k] = counts.get(k, 0) + v
    assert counts.get((PROCESSED, "page_view", "acme"), 0) == processed
    assert counts.get((THROTTLED, "page_view", "acme"), 0) == events - processed


def test_a_tenant_over_its_rate_does_not_throttle_another_and_unknown_are_dead_lettered() -> None:
    tenancy = Tenancy("default", {"acme": Quota(events_per_second=1)}, allow_unknown=False)
    settings = IngestSettings(1 << 16, "default", 3600.0, 100, tenancy=tenancy)
    batch = [event(n, "acme") for n in range(5)] + [event(5 + n, None) for n in range(5)]
    batch.append(event(10, "initech"))
    result = ingest_batch(
        batch, lambda p, k: None, 1_700_000_000_000, settings, None, EventRates(tenancy)
    )
    assert result.counts == {
        (PROCESSED, "page_view", "acme"): 1,
        (THROTTLED, "page_view", "acme"): 4,
        (PROCESSED, "page_view", "default"): 5,
        (DEAD_LETTERED, "unknown_tenant", OTHER_LABEL): 1,
    }
    assert result.tenant_throttled == {"acme": 4}
    assert [d.code for d in result.dead_letters] == ["unknown_tenant"]


def test_the_events_quota_is_shared_by_the_partitions_a_worker_owns() -> None:
    tenancy = Tenancy("default", {"acme": Quota(events_per_second=100)})
    rates = EventRates(tenancy)
    rates.resize(1, 4, 0.0)
    assert rates.buckets["acme"].rate == 25.0
    admitted = sum(rates.admit("acme", 0.0) for _ in range(100))
    assert admitted == 25


# --- sends per day ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "fraction", "sent", "over"),
    [
        pytest.param(Quota(sends_per_day=100), 1.0, 99, False, id="under"),
        pytest.param(Quota(sends_per_day=100), 1.0, 100, True, id="at"),
        pytest.param(Quota(sends_per_day=100), 0.5, 50, True, id="half-the-partitions"),
        pytest.param(Quota(), 1.0, 10**9, False, id="none"),
    ],
)
def test_sends_per_day(quota: Quota, fraction: float, sent: int, over: bool) -> None:
    assert over_daily_quota(quota, fraction, sent) is over


# --- queue keys -----------------------------------------------------------------------


def test_queue_keys_keep_each_tenant_lane_apart_and_record_keys_tenant_scoped() -> None:
    a = QueueKey(1, 1000, "s1", "acme", "acme")
    assert QueueKey.decode(a.encode()) == a
    assert a.record_key == delivery_key("acme", "s1") != delivery_key("globex", "s1")
    start, end = rank_bounds(1, 1000, "acme")
    assert start <= a.encode() < end
    for other in (QueueKey(1, 1000, "s1", "globex", "globex"), QueueKey(1, 1000, "s", "a", "a")):
        assert not start <= other.encode() < end
    cmd = {"send_id": "s1", "tenant_id": "initech", "user_id": "u", "category": "marketing"}
    delivery = accept(None, cmd, 5, lane="default")
    assert delivery is not None and delivery.queue_key is not None
    assert QueueKey.decode(delivery.queue_key) == QueueKey(4, 5, "s1", "initech", "default")


# --- fair delivery --------------------------------------------------------------------


class Sim:
    """The dispatcher's loop over fake queues: sends of tenants by class, a fake clock."""

    def __init__(self, rate: float, burst: float, shares: dict[str, float | None]) -> None:
        self.fair = FairPacer(Pacer(rate, burst), shares)
        self.queues: dict[int, dict[str, list[str]]] = {0: {}, 1: {}}
        self.sent: list[tuple[float, str]] = []

    def add(self, klass: int, tenant: str, n: int, name: str = "") -> None:
        q = self.queues[klass].setdefault(tenant, [])
        q.extend(f"{tenant}{name or klass}-{i}" for i in range(n))

    def tick(self, now: float) -> None:
        for klass in (0, 1):

            def queue(tenant: str, klass: int = klass) -> Iterator[str]:
                yield from list(self.queues[klass][tenant])

            def offer(tenant: str, item: str, klass: int = klass) -> str:
                verdict = self.fair.admit(tenant, "example.com", now, DAY, 0).verdict
                if verdict == TENANT_WAIT:
                    return LANE_DONE
                if verdict != GO:
                    return STOP
                self.queues[klass][tenant].remove(item)
                self.sent.append((now, item))
                return CHOSEN

            lanes = {t: queue(t) for t, q in self.queues[klass].items() if q}
            if not self.fair.serve(klass, lanes, offer):
                return


def test_tenants_take_turns_within_a_class() -> None:
    sim = Sim(rate=10, burst=6, shares={})
    sim.add(1, "a", 100)
    sim.add(1, "b", 2)
    sim.add(1, "c", 100)
    sim.tick(0.0)
    assert [s for _, s in sim.sent] == ["a1-0", "b1-0", "c1-0", "a1-1", "b1-1", "c1-1"]
    sim.sent.clear()
    for step in range(1, 5):  # one token each 0.1 s: the turn carries over between ticks
        sim.tick(step * 0.1)
    assert [s for _, s in sim.sent] == ["a1-2", "c1-2", "a1-3", "c1-3"]


def test_a_marketing_flood_does_not_delay_another_tenants_receipt_past_one_token() -> None:
    rate = 20.0
    sim = Sim(rate=rate, burst=rate, shares={})
    sim.add(1, "a", 10_000)
    now = 0.0
    while now < 2.0:  # the flood is going at the full rate
        sim.tick(now)
        now = round(now + 0.02, 6)
    assert len(sim.sent) == pytest.approx(rate * 2 + rate, abs=2)  # a burst, then the rate
    ready = now
    sim.add(0, "b", 1, "receipt")
    sent_at = None
    while sent_at is None:
        sim.tick(now)
        sent_at = next((t for t, s in sim.sent if s.startswith("breceipt")), None)
        now = round(now + 0.02, 6)
    assert sent_at - ready <= 1 / rate + 1e-9
    assert len(sim.queues[1]["a"]) > 9_000  # the flood is still queued


def test_a_tenant_rate_share_caps_it_and_leaves_the_rest_to_others() -> None:
    sim = Sim(rate=10, burst=10, shares={"a": 0.2})
    sim.add(1, "a", 1000)
    sim.add(1, "b", 1000)
    for step in range(101):  # ten seconds
        sim.tick(step * 0.1)
    sent = [s[0] for _, s in sim.sent]
    assert sent.count("a") == pytest.approx(2 + 10 * 2, abs=2)  # its burst, then 2/s
    assert sent.count("b") == pytest.approx(len(sent) - sent.count("a"))
    assert len(sent) == pytest.approx(10 + 100, abs=2)  # the provider limit still holds


def test_a_tenant_alone_is_limited_by_its_share_not_by_idle_tenants() -> None:
    sim = Sim(rate=10, burst=10, shares={"a": 0.5})
    sim.add(1, "a", 1000)
    for step in range(101):
        sim.tick(step * 0.1)
    assert len(sim.sent) == pytest.approx(5 + 50, abs=2)


def test_a_skipped_send_does_not_end_the_tenants_turn() -> None:
    fair = FairPacer(Pacer(100, 100), {})
    seen: list[str] = []

    def offer(tenant: str, item: str) -> str:
        seen.append(item)
        return SKIP if item.endswith("busy") else CHOSEN

    done = fair.serve(0, {"a": iter(["a-busy", "a-1"]), "b": iter(["b-1"])}, offer)
    assert done and seen == ["a-busy", "a-1", "b-1"]
    assert fair.last[0] == "b"
    assert fair.order(0, ["a", "b", "c"]) == ["c", "a", "b"]


def test_the_provider_limit_stops_everyone_and_refunds_the_tenant_token() -> None:
    fair = FairPacer(Pacer(1, 1), {"a": 1.0})
    assert fair.admit("a", "x.com", 0.0, DAY, 0).verdict == GO
    assert fair.admit("b", "x.com", 0.0, DAY, 0).verdict == RATE_WAIT
    assert fair.bucket("b").tokens == 1.0  # refunded
    fair.resize(1, 2, 0.0)
    assert fair.bucket("a").rate == 0.5 and fair.pacer.bucket.rate == 0.5
