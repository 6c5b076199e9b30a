"""Domain metrics, beside Faust's own sensors in the same Prometheus registry."""

from __future__ import annotations

from functools import cache
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


def labelled(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, looked up once per set of labels. labels() checks and
    converts the values and takes a lock every call, about 0.9 µs; the calls on the way
    from an event to its send make several of them per event."""
    child: M = _child(metric, labels)
    return child


@cache
def _child(metric: M, labels: tuple[str, ...]) -> M:
    return metric.labels(*labels)


EVENTS_CONSUMED = Counter(
    "mailstream_events_consumed_total", "Event messages consumed from the events topic."
)
EVENT_OUTCOMES = Counter(
    "mailstream_events_total",
    "Consumed events by outcome, event type (invalid events have type 'invalid') and"
    " tenant (configured tenants and the default; '(other)' for the rest). rerouted (type"
    " and tenant '(not read)'): found outside its user's partition and copied there, where"
    " it ends in one of the final outcomes.",
    ["outcome", "event_type", "tenant"],
)
DEAD_LETTERS = Counter(
    "mailstream_dead_letters_total",
    "Messages sent to the dead-letter topic, by reason.",
    ["reason"],
)
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SECONDS = Histogram(
    "mailstream_ingest_batch_seconds",
    "Time to process one ingest batch, changelog acknowledgement included.",
    buckets=_BATCH_BUCKETS,
)
INGEST_FLUSH_SECONDS = Histogram(
    "mailstream_ingest_flush_seconds",
    "Time an ingest batch took to make its effects durable: its send commands, then its"
    " user records, sent and acknowledged by the broker stage by stage, and the local"
    " stores written. Part of mailstream_ingest_batch_seconds.",
    buckets=_BATCH_BUCKETS,
)
TRANSACTIONS = Counter(
    "mailstream_transactions",
    "Kafka transactions of flushes under processing_guarantee exactly_once, by how they"
    " ended: committed, failed (given up and tried again; its records are never read),"
    " fenced (another worker had taken the partition over)",
    ["outcome"],
)
REPLAYED = Counter(
    "mailstream_events_replayed_total",
    "Messages delivered again after a restart or rebalance whose effect was already applied;"
    " skipped, and not counted as consumed.",
)
WORKFLOW_TRANSITIONS = Counter(
    "mailstream_workflow_transitions_total",
    "Enrollment transitions by workflow: enrolled, completed, exited_goal, exited, timed_out,"
    " wait_for_matched, step_limit, dropped, context_refreshed (the trigger again while"
    " enrolled), digest_collected, digest_sent.",
    ["workflow", "transition"],
)
SEND_COMMANDS = Counter(
    "mailstream_send_commands_total",
    "Sends the policy let through, by category and result: emitted to a send topic, or"
    " template_error (dead-lettered).",
    ["category", "result"],
)
SEND_DECISIONS = Counter(
    "mailstream_send_decisions_total",
    "Send policy decisions by category, decision (send, drop, defer) and reason (ok,"
    " no_recipient, suppressed, globally_suppressed, no_consent, capped, quiet_hours,"
    " goal_reached), by tenant. A deferred send is decided again when due, so it counts"
    " again.",
    ["category", "decision", "reason", "tenant"],
)
TIMERS_FIRED = Counter("mailstream_timers_fired_total", "Timers that came due and were run.")
TIMER_LAG = Histogram(
    "mailstream_timer_lag_seconds",
    "How late a timer ran after its due time.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
TIMER_TICK = Histogram(
    "mailstream_timer_tick_seconds",
    "Time to look for (and run) due timers across this worker's partitions, once.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
CHANGELOG_RECORDS = Counter(
    "mailstream_changelog_records_total", "State records written to table changelogs.", ["table"]
)
QUEUE_COMPACTION_SECONDS = Histogram(
    "mailstream_queue_compaction_seconds",
    "Time a queue-like table (delivery_queue, webhook_queue, timers) took to compact"
    " away the tombstones of the due keys it deleted (mailstream.state.rocksdb_store), on a thread"
    " of its own.",
    ["table"],
    buckets=_BATCH_BUCKETS,
)
SUPPRESSION_LIST_SIZE = Gauge(
    "mailstream_suppression_list_addresses",
    "Addresses on the global suppression list held by this worker.",
)
HTTP_EVENTS = Counter(
    "mailstream_http_events_total",
    "Events sent over HTTP (/v1/track, /v1/identify, /v1/batch) by result: accepted,"
    " invalid, unauthorized, too_large, rate_limited, unavailable (counted per request"
    " for the refusals that read no events).",
    ["result"],
)
SUPPRESSION_LIST_LOADED = Gauge(
    "mailstream_suppression_list_loaded",
    "1 once this worker has read the whole global suppression list (it sends nothing and"
    " fires no timer before), else 0.",
)
READY = Gauge(
    "mailstream_ready",
    "1 while /health reports this worker ready (joined, tables recovered, suppression list"
    " read, broker answering), else 0.",
)
EVENTS_LAG = Gauge(
    "mailstream_events_lag",
    "Events in this worker's partitions of the events topic not yet applied, as last"
    " measured (every 15 s while the worker is settled and the broker answers).",
)
SEND_QUEUE_AGE = Gauge(
    "mailstream_send_queue_oldest_seconds",
    "How long the oldest send of this worker's delivery queue that may go now has waited"
    " since it could go, by category (0: none waiting), as last measured (every 15 s).",
    ["category"],
)


class LabelCap:
    """Keeps a label's values bounded: after ``limit`` distinct values the rest are 'other'."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) < self.limit:
            self._known.add(value)
            return value
        return "other"


event_type_label = LabelCap()

DELIVERIES = Counter(
    "mailstream_deliveries_total",
    "Send commands the delivery agent took in or resolved, by category and result: queued,"
    " deduplicated (send id seen before), requeued (transactional found mid-attempt after a"
    " crash), unknown (marketing found mid-attempt: not sent again), quota_deferred and"
    " quota_dropped (marketing beyond the tenant's sends per day), suppressed (the user or"
    " address suppressed after the command was written: not sent), by tenant.",
    ["category", "result", "tenant"],
)
SENDS = Counter(
    "mailstream_sends_total",
    "Provider calls by provider, category, result (sent, retry, permanent, exhausted) and tenant.",
    ["provider", "category", "result", "tenant"],
)
PROVIDER_SECONDS = Histogram(
    "mailstream_provider_request_seconds",
    "Time for one provider call, answered or failed.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
PACER_WAITS = Counter(
    "mailstream_pacer_waits_total",
    "Times the dispatcher stopped for the provider rate limit (rate_wait) or the day's"
    " warm-up cap (warmup_cap) with sends ready, or skipped a tenant whose share of the"
    " rate was used up (tenant_wait).",
    ["reason"],
)
SUPPRESSED = Counter(
    "mailstream_users_suppressed_total",
    "Users suppressed by mailstream itself, by reason (hard_bounce: the provider refused"
    " the address).",
    ["reason"],
)
WEBHOOKS = Counter(
    "mailstream_webhooks_total",
    "Provider webhook requests by provider and result: accepted, or why refused"
    " (missing_signature, bad_signature, stale, unauthorized, not_json, bad_shape,"
    " too_large, not_configured).",
    ["provider", "result"],
)
WEBHOOK_CLAIMS = Counter(
    "mailstream_webhook_claims_total",
    "Signed provider webhooks (a Mailgun request, a SendGrid event) at the replay guard, by"
    " provider and result: applied, or replayed (its key let through before: dropped).",
    ["provider", "result"],
)
FEEDBACK = Counter(
    "mailstream_feedback_total",
    "Feedback events by kind and what they did: hard_bounce, complaint, unsubscribe"
    " (suppressions), soft_bounce, delivered, open, click, no_change, duplicate, no_user,"
    " suppressed_by_address; rerouted (kind '(not read)'): found outside its user's"
    " partition and copied there, where it is counted again.",
    ["kind", "result"],
)
UNSUBSCRIBES = Counter(
    "mailstream_unsubscribe_requests_total",
    "One-click unsubscribe requests by result: done, forged (bad token), bad_request.",
    ["result"],
)
EVENT_TO_SEND = Histogram(
    "mailstream_event_to_send_seconds",
    "From the timestamp of the event that triggered a send to the provider accepting it,"
    " for sends made right away (not after a wait or a hold).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
SEND_PATH = Histogram(
    "mailstream_send_path_seconds",
    "Where the time from a triggering event to the provider goes, for sends made right"
    " away: from the event's timestamp to the batch that wrote the send command being"
    " durable (stage written), the delivery agent taking the command (taken), recording it"
    " as queued (queued), and its provider call starting (calling). A transactional call"
    " may start before its queued record is durable, so calling can come before queued.",
    ["stage"],
    buckets=(
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.15,
        0.2,
        0.25,
        0.35,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        10.0,
        60.0,
    ),
)
TIMERS_PENDING = Gauge(
    "mailstream_timers_pending",
    "Timers (waits, inactivity checks, held sends) pending in this worker's partitions,"
    " as last counted.",
)

# ---- the webhook step (docs/webhook-step.md) ----------------------------------------------

WEBHOOK_COMMANDS = Counter(
    "mailstream_webhook_commands_total",
    "Webhook step commands by endpoint and result: emitted (by a workflow), body_error"
    " (the body did not render: dead-lettered), queued (taken in by the webhook agent),"
    " deduplicated (webhook id seen before), requeued (found mid-call after a crash),"
    " bad_command and unknown_endpoint (dead-lettered).",
    ["endpoint", "result"],
)
WEBHOOK_CALLS = Counter(
    "mailstream_webhook_calls_total",
    "Webhook calls by endpoint and outcome: delivered (2xx), retry (5xx, 408, 429, timeout or"
    " no connection; tried again after a backoff), failed (another 4xx: permanent),"
    " exhausted (retries used up), short_circuited (held back, not made, while the breaker"
    " is open), expired (not delivered within give_up_after).",
    ["endpoint", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "mailstream_webhook_request_seconds",
    "Time for one webhook call, answered or failed.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WEBHOOK_BREAKER = Gauge(
    "mailstream_webhook_breaker_state",
    "The circuit breaker of each endpoint's URL on this worker: 0 closed, 1 half-open, 2 open.",
    ["endpoint"],
)
WEBHOOK_BREAKER_TRANSITIONS = Counter(
    "mailstream_webhook_breaker_transitions_total",
    "Circuit breaker changes by endpoint and the state entered (open, half_open, closed).",
    ["endpoint", "state"],
)
WEBHOOK_STORED = Counter(
    "mailstream_webhook_stored_total",
    "Answer fields a webhook step asked to store in the enrollment's context, by endpoint"
    " and result: stored, missing (not in the answer), too_large, no_enrollment (the"
    " enrollment ended or moved on before the answer came).",
    ["endpoint", "result"],
)

# Per workflow, for workflow health (mailstream.workflows.health). Workflow and template names come
# from the config, so they are bounded; missing-variable names are capped below.
TEMPLATE_RENDERS = Counter(
    "mailstream_template_renders_total",
    "Template renders for send steps by workflow, template and result: ok, or why it"
    " failed (undefined_variable, with the missing name in `variable`; sandbox;"
    " runtime_error; bad_subject; invalid_template). A failed render is dead-lettered.",
    ["workflow", "template", "result", "variable"],
)
variable_label = LabelCap(50)
WORKFLOW_SENDS = Counter(
    "mailstream_workflow_sends_total",
    "Provider outcomes of each workflow's sends: sent, retry, permanent, exhausted, and"
    " unknown (marketing found mid-attempt after a crash: not sent again).",
    ["workflow", "result"],
)
WORKFLOW_EVENT_TO_SEND = Histogram(
    "mailstream_workflow_event_to_send_seconds",
    "mailstream_event_to_send_seconds by workflow: from the triggering event to the provider"
    " accepting, for sends made right away (not after a wait or a hold).",
    ["workflow"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
WORKFLOW_TIMER_LAG = Histogram(
    "mailstream_workflow_timer_lag_seconds",
    "mailstream_timer_lag_seconds by workflow: how late its waits, inactivity checks and"
    " held sends ran after their due time.",
    ["workflow"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

TENANT_QUOTA = Counter(
    "mailstream_tenant_quota_total",
    "What a tenant's quota held back, by tenant, quota (events_per_second, sends_per_day)"
    " and action (throttled, deferred, dropped).",
    ["tenant", "quota", "action"],
)

# ---- robustness (docs/robustness.md) -------------------------------------------------------

DISPATCHER_ERRORS = Counter(
    "mailstream_dispatcher_errors_total",
    "Rounds of a dispatcher (delivery, webhooks) that raised; the loop backed off and went"
    " on. A command that made three rounds raise is dead-lettered (reason"
    " dispatcher_error).",
    ["dispatcher"],
)
RECORDS_PRUNED = Counter(
    "mailstream_records_pruned_total",
    "Records deleted by the retention sweep, by table (deliveries, webhook_calls) and kind:"
    " final (a finished send or call older than its retention), sent_counter (a past"
    " day's sends count).",
    ["table", "kind"],
)
