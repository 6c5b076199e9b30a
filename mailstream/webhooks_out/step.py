"""The ``webhook`` step as written in a workflow, its compiled form, and what the engine
emits when an enrollment reaches it.

```yaml
- webhook:
    endpoint: crm                  # a name under webhooks_out
    body: {email: "{{ user.email }}", total: "{{ event.total }}"}
    store: {from: crm_id, as: crm_id}   # optional: a field of the JSON answer -> context
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailstream.webhooks_out.json_body import Body, BodyError

DOTTED = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StoreSpec(_Spec):
    from_: str = Field(alias="from", pattern=DOTTED)  # a dotted path into the JSON answer
    as_: str = Field(alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # context key


class WebhookSpec(_Spec):
    endpoint: str = Field(pattern=NAME)
    body: dict[str, Any] = {}
    store: StoreSpec | None = None

    @field_validator("body")
    @classmethod
    def _compiles(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Body(value)
        except BodyError as exc:
            raise ValueError(str(exc)) from None
        return value


class WebhookStep(_Spec):
    id: str | None = None
    webhook: WebhookSpec


@dataclass(frozen=True, slots=True)
class WebhookAction:
    """A compiled webhook step."""

    endpoint: str
    body: Body
    store_from: str | None = None
    store_as: str | None = None


def compile_webhook(spec: WebhookSpec) -> WebhookAction:
    store = spec.store
    return WebhookAction(
        endpoint=spec.endpoint,
        body=Body(spec.body),
        store_from=store.from_ if store else None,
        store_as=store.as_ if store else None,
    )


@dataclass(frozen=True, slots=True)
class WebhookIntent:
    """A webhook step reached: what to render and call, with its deterministic id."""

    webhook_id: str
    workflow: str
    enrollment_id: str
    step: int
    action: WebhookAction
    context: dict[str, Any]
    event: dict[str, Any]
