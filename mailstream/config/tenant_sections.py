"""The ``tenants:`` section of ``mailstream.yaml``: each tenant's quota and the sections it
overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from mailstream.config.sections import Section
from mailstream.core.tenants import Quota

TenantId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class TenantQuotaConfig(Section):
    events_per_second: float | None = Field(None, gt=0)  # per tenant, the whole deployment
    sends_per_day: int | None = Field(None, ge=1)  # UTC days; transactional is never held
    over_daily_quota: Literal["defer", "drop"] = "defer"  # what happens to marketing beyond
    rate_share: float | None = Field(None, gt=0, le=1)  # of delivery.rate_limit

    def quota(self) -> Quota:
        return Quota(
            self.events_per_second, self.sends_per_day, self.over_daily_quota, self.rate_share
        )


# The top-level sections a tenant may override, and the delivery keys among them (the
# rest of `delivery` is the deployment's: one rate limit, one retry policy, one queue).
TENANT_SECTIONS = ("workflows", "templates_dir", "policy", "delivery", "providers")
TENANT_DELIVERY_KEYS = (
    "provider",
    "from_address",
    "reply_to",
    "message_id_domain",
    "unsubscribe_mailto",
)


class TenantConfig(Section):
    """A tenant's own settings: its quota, and the sections that replace the defaults'
    (merged key by key; checked in full by ``Config.tenant_configs``)."""

    quota: TenantQuotaConfig = TenantQuotaConfig()
    workflows: dict[str, Any] | None = None
    templates_dir: Path | None = None
    policy: dict[str, Any] | None = None
    delivery: dict[str, Any] | None = None
    providers: dict[str, Any] | None = None
