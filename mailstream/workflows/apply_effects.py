"""Turn the effects of a workflow run into outbox entries: timers, send commands (for the
sends the policy let through), dead letters for sends that cannot be rendered."""

from __future__ import annotations

import hashlib
import logging

import orjson

from mailstream.core.cluster_trust import ClusterKey
from mailstream.core.user_state import UserState
from mailstream.delivery.send_command import encode_send_command, send_command, template_user
from mailstream.kafka.records import RawMessage
from mailstream.observability import metrics
from mailstream.state.staged_flush import AFTER_STATE, BEFORE_STATE, Outbox
from mailstream.state.store import Store
from mailstream.state.timer_keys import TimerKey
from mailstream.webhooks_out.call_command import encode_command, webhook_command
from mailstream.webhooks_out.json_body import BodyError
from mailstream.webhooks_out.step import WebhookIntent
from mailstream.workflows.engine import Effects, SendIntent
from mailstream.workflows.health_labels import TOO_LARGE, TOO_LARGE_PREFIX, render_failure
from mailstream.workflows.template_files import TemplateError
from mailstream.workflows.templates import Templates

logger = logging.getLogger(__name__)


# The largest message the worker's producer sends: Faust's producer_max_request_size,
# which mailstream leaves at its default (the ingest agent passes the app's own).
PRODUCER_MAX_REQUEST_BYTES = 1_000_000
# What a dead letter leaves for the record batch around it and the headers the producer
# adds, under the producer's max request size.
DEAD_LETTER_MARGIN = 1024
# A reason is a sentence; an exception's message may be anything.
MAX_REASON_BYTES = 2048


def dead_letter_headers(
    code: str, reason: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    reason_bytes = reason.encode()
    if len(reason_bytes) > MAX_REASON_BYTES:
        cut = reason_bytes[: MAX_REASON_BYTES - 3].decode(errors="ignore")
        reason_bytes = cut.encode() + b"..."
    return [
        ("mailstream.reason", reason_bytes),
        ("mailstream.reason_code", code.encode()),
        ("mailstream.source.topic", topic.encode()),
        ("mailstream.source.partition", str(partition).encode()),
        ("mailstream.source.offset", str(offset).encode()),
    ]


def fit_dead_letter(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], max_bytes: int
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A dead letter the producer can send: as it is when key, value and headers fit in
    ``max_bytes`` (less a margin), else with the value (and a key over 1 KiB) cut to fit
    and headers giving the original value's size and SHA-256, so it can be found at its
    source and recognised."""

    def size(k: bytes | None, v: bytes, hs: list[tuple[str, bytes]]) -> int:
        return len(k or b"") + len(v) + sum(len(n) + len(h) for n, h in hs)

    budget = max_bytes - DEAD_LETTER_MARGIN
    if size(key, value, headers) <= budget:
        return key, value, headers
    headers = [
        *headers,
        ("mailstream.truncated", b"true"),
        ("mailstream.original_size", str(len(value)).encode()),
        ("mailstream.original_sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    if key is not None and len(key) > 1024:
        headers.append(("mailstream.original_key_size", str(len(key)).encode()))
        key = key[:1024]
    room = max(0, budget - size(key, b"", headers))
    return key, value[:room], headers


def dead_letter_message(
    outbox: Outbox,
    dlq_topic: str,
    message: RawMessage,
    code: str,
    reason: str,
    max_bytes: int = PRODUCER_MAX_REQUEST_BYTES,
) -> None:
    """A consumed message that cannot be processed: to the dead-letter topic as it came,
    with the reason and where it came from; cut to fit ``max_bytes`` (the producer's
    max request size) when it would not."""
    headers = dead_letter_headers(code, reason, message.topic, message.partition, message.offset)
    key, value, headers = fit_dead_letter(message.key, message.value or b"", headers, max_bytes)
    outbox.send(dlq_topic, key, value, headers, origin=message.partition)


def dead_letter_counted(
    outbox: Outbox, dlq_topic: str, message: RawMessage, code: str, reason: str
) -> None:
    """``dead_letter_message``, counted in ``mailstream_dead_letters_total`` by ``code``
    (the ingest agent counts its own once the batch is durable)."""
    dead_letter_message(outbox, dlq_topic, message, code, reason)
    metrics.DEAD_LETTERS.labels(code).inc()


class EffectsApplier:
    """Adds what one user's engine effects imply to an outbox."""

    def __init__(
        self,
        templates: Templates,
        timers: Store,
        send_topics: dict[str, str],
        dlq_topic: str,
        webhook_topic: str | None = None,
        tenant_label: str = "default",
        *,
        cluster: ClusterKey,
        max_message_bytes: int,
    ) -> None:
        self.tenant_label = tenant_label  # for the metrics: bounded by the config
        self.cluster = cluster  # signs every command written (mailstream.core.cluster_trust)
        self.max_message_bytes = max_message_bytes  # delivery.max_message_bytes
        self.templates = templates
        self.timers = timers
        self.send_topics = send_topics  # category -> topic
        self.dlq_topic = dlq_topic
        self.webhook_topic = webhook_topic

    def apply(
        self,
        outbox: Outbox,
        partition: int,
        user_key: bytes,
        user: UserState,
        fx: Effects,
        now: int,
    ) -> None:
        for op in fx.timers_del:
            key = TimerKey(op.due, user_key, op.kind, op.workflow).encode()
            outbox.put(self.timers, partition, key, None, AFTER_STATE)
        for op in fx.timers_add:
            key = TimerKey(op.due, user_key, op.kind, op.workflow).encode()
            outbox.put(self.timers, partition, key, b"", BEFORE_STATE)
        for intent in fx.sends:
            self._send(outbox, partition, user, intent, now)
        for hook in fx.webhooks:
            self._webhook(outbox, partition, user, hook, now)
        for workflow, what in fx.counts:
            metrics.labelled(metrics.WORKFLOW_TRANSITIONS, workflow, what).inc()
        for category, decision, reason in fx.decisions:
            metrics.labelled(
                metrics.SEND_DECISIONS, category, decision, reason, self.tenant_label
            ).inc()

    def _send(
        self, outbox: Outbox, partition: int, user: UserState, intent: SendIntent, now: int
    ) -> None:
        try:
            rendered = self.templates.render(
                intent.template,
                user=template_user(user),
                event=intent.event,
                context=intent.context,
                locale=user.traits.get("locale")
                if isinstance(user.traits.get("locale"), str)
                else None,
            )
            key, value = encode_send_command(
                self.cluster, send_command(user, intent, rendered, now)
            )
            if len(value) > self.max_message_bytes:
                # No provider takes it and the producer could not write it: a render
                # failure, which the workflow's health shows, not a stuck partition.
                raise TemplateError(
                    intent.template,
                    None,
                    f"{TOO_LARGE_PREFIX} {len(value)} bytes, over delivery.max_message_bytes"
                    f" ({self.max_message_bytes}); not sent",
                )
        except TemplateError as exc:
            self._render_failed(outbox, partition, user, intent, exc)
            return
        metrics.labelled(metrics.TEMPLATE_RENDERS, intent.workflow, intent.template, "ok", "").inc()
        outbox.send(self.send_topics[intent.category], key, value)
        metrics.labelled(metrics.SEND_COMMANDS, intent.category, "emitted").inc()

    def _render_failed(
        self,
        outbox: Outbox,
        partition: int,
        user: UserState,
        intent: SendIntent,
        exc: TemplateError,
    ) -> None:
        """A send that cannot be rendered (or renders too large): dead-lettered with the
        reason, counted for its workflow's health; the worker goes on."""
        metrics.SEND_COMMANDS.labels(intent.category, "template_error").inc()
        reason, variable = render_failure(exc)
        metrics.TEMPLATE_RENDERS.labels(
            intent.workflow, intent.template, reason, metrics.variable_label(variable)
        ).inc()
        code = "message_too_large" if reason == TOO_LARGE else "template_error"
        metrics.DEAD_LETTERS.labels(code).inc()
        doc = {
            "send_id": intent.send_id,
            "tenant_id": user.tenant_id,
            "user_id": user.user_id,
            "workflow": intent.workflow,
            "step": intent.step,
            "template": intent.template,
            "error": {
                "template": exc.template,
                "file": exc.file,
                "line": exc.line,
                "reason": exc.reason,
            },
        }
        headers = dead_letter_headers(code, str(exc), f"workflow:{intent.workflow}", partition, -1)
        outbox.send(self.dlq_topic, user.user_id.encode(), orjson.dumps(doc), headers)

    def _webhook(
        self, outbox: Outbox, partition: int, user: UserState, intent: WebhookIntent, now: int
    ) -> None:
        """A webhook step's command, its body rendered now; a body that does not render
        goes to the dead-letter topic with the key and the reason, like a template."""
        endpoint = intent.action.endpoint
        assert self.webhook_topic is not None, "a webhook step needs the webhooks topic"
        try:
            body = intent.action.body.render(template_user(user), intent.event, intent.context)
        except BodyError as exc:
            metrics.WEBHOOK_COMMANDS.labels(endpoint, "body_error").inc()
            metrics.DEAD_LETTERS.labels("webhook_body_error").inc()
            doc = {
                "webhook_id": intent.webhook_id,
                "tenant_id": user.tenant_id,
                "user_id": user.user_id,
                "workflow": intent.workflow,
                "step": intent.step,
                "endpoint": endpoint,
                "error": {"path": exc.path, "reason": exc.reason},
            }
            reason = f"workflows.{intent.workflow}.steps[{intent.step}].webhook.{exc}"
            headers = dead_letter_headers(
                "webhook_body_error", reason, f"workflow:{intent.workflow}", partition, -1
            )
            outbox.send(self.dlq_topic, user.user_id.encode(), orjson.dumps(doc), headers)
            return
        key, value = encode_command(self.cluster, webhook_command(user, intent, body, now))
        outbox.send(self.webhook_topic, key, value)
        metrics.WEBHOOK_COMMANDS.labels(endpoint, "emitted").inc()
