"""The sections of ``mailstream.yaml`` that decide which events count and which sends go:
sampling, throttling, consent, frequency caps and quiet hours."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BeforeValidator, Field

from mailstream.config.durations import parse_duration
from mailstream.config.sections import Seconds, Section
from mailstream.core.windows import Cap, QuietHours, SamplingRule, ThrottleRule, parse_clock, zone
from mailstream.workflows.send_policy import PolicySettings

EventType = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


def _not_identify(rules: dict[str, Any]) -> dict[str, Any]:
    if "identify" in rules:
        raise ValueError(
            "identify events carry traits and consent and are never sampled or throttled"
        )
    return rules


class SignificantChange(Section):
    # a dotted path into the payload, e.g. `price` or `cart.total`
    field: str = Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # numbers: the smallest difference that counts (0: any); other values: any change
    threshold: float = Field(0.0, ge=0)


class SamplingConfig(Section):
    rate: float = Field(1.0, ge=0.0, le=1.0)
    min_interval: Seconds = 0.0
    significant_change: SignificantChange | None = None

    def rule(self) -> SamplingRule:
        change = self.significant_change
        return SamplingRule(
            rate=self.rate,
            min_interval_ms=int(self.min_interval * 1000),
            watch=tuple(change.field.split(".")) if change else None,
            threshold=change.threshold if change else 0.0,
        )


class ThrottleConfig(Section):
    limit: int = Field(ge=1, le=10_000)
    per: Annotated[Seconds, Field(gt=0)]

    def rule(self) -> ThrottleRule:
        return ThrottleRule(self.limit, int(self.per * 1000))


def _cap_period(value: object) -> object:
    return value if value in ("day", "week") else parse_duration(value)


class CapConfig(Section):
    max: int = Field(ge=1, le=1000)
    # `day` or `week`: the user's calendar day or week (from Monday), in their time zone;
    # a duration (`24h`, `7d`): a sliding window
    per: Annotated[
        Literal["day", "week"] | Annotated[float, Field(gt=0)], BeforeValidator(_cap_period)
    ]

    def cap(self) -> Cap:
        if self.per == "day" or self.per == "week":
            return Cap(self.max, calendar=self.per)
        return Cap(self.max, per_ms=int(self.per * 1000))


def _clock(value: str) -> str:
    parse_clock(value)
    return value


Clock = Annotated[str, AfterValidator(_clock)]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except Exception:
        raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Paris") from None
    return value


class QuietHoursConfig(Section):
    start: Clock  # local time the window opens, e.g. 21:00
    end: Clock  # and closes, e.g. 08:00 (a window may cross midnight)


class ConsentConfig(Section):
    # opt_in: marketing needs consent.marketing true; opt_out: only false stops it
    marketing: Literal["opt_in", "opt_out"] = "opt_in"
    # per value of the region trait (case-insensitive), e.g. {EU: opt_in, US: opt_out}
    by_region: dict[str, Literal["opt_in", "opt_out"]] = {}
    region_trait: str = Field("region", min_length=1)


class FrequencyCapsConfig(Section):
    caps: list[CapConfig] = []
    when_capped: Literal["defer", "drop"] = "defer"


class PolicyConfig(Section):
    consent: ConsentConfig = ConsentConfig()
    frequency_caps: FrequencyCapsConfig = FrequencyCapsConfig()
    quiet_hours: QuietHoursConfig | None = None
    # for users without a valid `timezone` trait
    default_timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    decisions_kept: int = Field(20, ge=1, le=1000)

    def settings(self) -> PolicySettings:
        default_tz = ZoneInfo(self.default_timezone)
        quiet = self.quiet_hours
        return PolicySettings(
            consent=self.consent.marketing,
            consent_by_region={k.casefold(): v for k, v in self.consent.by_region.items()},
            region_trait=self.consent.region_trait,
            caps=tuple(c.cap() for c in self.frequency_caps.caps),
            when_capped=self.frequency_caps.when_capped,
            quiet=QuietHours(parse_clock(quiet.start), parse_clock(quiet.end)) if quiet else None,
            default_tz=zone(self.default_timezone, default_tz),
            decisions_kept=self.decisions_kept,
        )


# event type -> how many of its events to keep (never identify)
SamplingRules = Annotated[dict[EventType, SamplingConfig], AfterValidator(_not_identify)]
# event type -> at most `limit` per user per `per`
ThrottlingRules = Annotated[dict[EventType, ThrottleConfig], AfterValidator(_not_identify)]
