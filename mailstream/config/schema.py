"""The whole of ``mailstream.yaml``: ``Config``, made of the sections, with the checks that
span them (mailstream.config.load reads it from a file and the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, PrivateAttr, model_validator

from mailstream.config.kafka_sections import BrokerConfig, TopicsConfig
from mailstream.config.policy_sections import PolicyConfig, SamplingRules, ThrottlingRules
from mailstream.config.sections import (
    ClusterConfig,
    DeliveryConfig,
    FeedbackConfig,
    HttpIngestConfig,
    IngestConfig,
    ProvidersConfig,
    RetentionConfig,
    Section,
    WebConfig,
    WebhooksConfig,
)
from mailstream.config.tenant_sections import TenantConfig, TenantId
from mailstream.config.webhooks_out_settings import WebhookEndpoint
from mailstream.core.tenants import Tenancy
from mailstream.workflows.spec import Workflow, WorkflowSpec, compile_workflow


class Config(Section):
    app_id: str = Field("mailstream", pattern=r"^[A-Za-z0-9._-]+$")
    data_dir: Path = Path("data")
    log_level: str = Field("info", pattern=r"^(debug|info|warning|error)$")
    broker: BrokerConfig = BrokerConfig()
    # at_least_once: each flush is written in acknowledged stages; exactly_once: in one
    # Kafka transaction per partition, read committed, a stale worker fenced (Apache
    # Kafka only; see docs/faults.md for what each guarantees)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    topics: TopicsConfig = TopicsConfig()
    ingest: IngestConfig = IngestConfig()
    web: WebConfig = WebConfig()
    http_ingest: HttpIngestConfig = HttpIngestConfig()
    cluster: ClusterConfig = ClusterConfig()
    # event type -> how many of its events to keep (never identify)
    sampling: SamplingRules = {}
    # event type -> at most `limit` per user per `per`
    throttling: ThrottlingRules = {}
    policy: PolicyConfig = PolicyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    providers: ProvidersConfig = ProvidersConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    # endpoint name -> where webhook steps POST to (see docs/webhook-step.md)
    webhooks_out: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], WebhookEndpoint
    ] = {}
    # Where email templates live; default: the templates shipped in the package. A
    # relative path is relative to the config file (like `include:`).
    templates_dir: Path | None = None
    # None: the shipped example journeys (mailstream/config/default_workflows.yaml).
    workflows: (
        dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], WorkflowSpec] | None
    ) = None
    # Other YAML files whose `workflows:` are added to these (paths relative to this file).
    include: list[str] = []
    # tenant id -> its quota and the sections it overrides (see docs/tenants.md)
    tenants: dict[TenantId, TenantConfig] = {}
    # how long finished deliveries and webhook calls are kept (see docs/robustness.md)
    retention: RetentionConfig = RetentionConfig()

    _tenant_configs: dict[str, Config] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _transactions_need_kafka(self) -> Config:
        if self.processing_guarantee == "exactly_once" and self.broker.embedded:
            raise ValueError(
                "processing_guarantee: exactly_once needs Kafka transactions, which the"
                " embedded broker (broker.embedded: true) does not have; use at_least_once"
                " there, or Apache Kafka"
            )
        return self

    @model_validator(mode="after")
    def _provider_configured(self) -> Config:
        name = self.delivery.provider
        if name in ("smtp", "mailgun") and getattr(self.providers, name) is None:
            raise ValueError(
                f"delivery.provider is {name}, but providers.{name} is not set"
                " (it needs at least a host or a domain; see the README)"
            )
        return self

    @model_validator(mode="after")
    def _webhook_endpoints_exist(self) -> Config:
        for workflow in self.compiled_workflows() if self.workflows is not None else ():
            for step in workflow.steps:
                if step.webhook is not None and step.webhook.endpoint not in self.webhooks_out:
                    known = ", ".join(sorted(self.webhooks_out)) or "none"
                    raise ValueError(
                        f"workflows.{workflow.name}.steps[{step.index}].webhook.endpoint: no"
                        f" endpoint {step.webhook.endpoint!r} under webhooks_out (configured:"
                        f" {known})"
                    )
        return self

    @model_validator(mode="after")
    def _retention_beyond_dedup(self) -> Config:
        window = self.ingest.dedup_window
        for key in ("deliveries", "webhook_calls"):
            kept = getattr(self.retention, key)
            if kept < window:
                raise ValueError(
                    f"retention.{key}: {kept:g}s is shorter than ingest.dedup_window"
                    f" ({window:g}s); a deleted record forgets its id, so a command with"
                    " that id arriving again would be sent again. Keep records well beyond"
                    " the events topic's retention (default 30d)"
                )
        return self

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    def compiled_workflows(self) -> list[Workflow]:
        specs = self.workflows if self.workflows is not None else default_workflows()
        return [compile_workflow(name, spec) for name, spec in specs.items()]

    def tenant(self, tenant_id: str) -> Config:
        """The effective config of a tenant: its own sections over the defaults. An
        unconfigured tenant (and the default one, unless configured) gets the defaults."""
        return self._tenant_configs.get(tenant_id, self)

    def set_tenant_config(self, tenant_id: str, config: Config) -> None:
        """Record a tenant's effective config (mailstream.config.load builds it)."""
        self._tenant_configs[tenant_id] = config

    def tenancy(self) -> Tenancy:
        unknown = self.ingest.unknown_tenants
        if unknown is None:
            unknown = "dead_letter" if self.tenants else "allow"
        return Tenancy(
            self.ingest.default_tenant,
            {name: t.quota.quota() for name, t in self.tenants.items()},
            allow_unknown=unknown == "allow",
        )

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.url.removeprefix("kafka://")

    @property
    def web_url(self) -> str:
        return self.web.canonical_url or f"http://{self.web.host}:{self.web.port}"


DEFAULT_WORKFLOWS = Path(__file__).with_name("default_workflows.yaml")


def default_workflows() -> dict[str, WorkflowSpec]:
    raw = yaml.safe_load(DEFAULT_WORKFLOWS.read_text(encoding="utf-8"))
    return {name: WorkflowSpec.model_validate(spec) for name, spec in raw.items()}
