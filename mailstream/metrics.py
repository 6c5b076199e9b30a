"""Domain metrics, beside Faust's own sensors in the same Prometheus registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "mailstream_events_consumed_total", "Event messages consumed from the events topic."
)
EVENT_OUTCOMES = Counter(
    "mailstream_events_total",
    "Consumed events by final outcome, event type (invalid events have type 'invalid') and"
    " tenant (configured tenants and the default; '(other)' for the rest).",
    ["outcome", "event_type", "tenant"],
)
DEAD_LETTERS = Counter(
    "mailstream_dead_letters_total",
    "Messages sent to the dead-letter topic, by reason.",
    ["reason"],
)
BATCH_SECONDS = Histogram(
    "mailstream_ingest_batch_seconds",
    "Time to process one ingest batch, changelog acknowledgement included.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REPLAYED = Counter(
    "mailstream_events_replayed_total",
    "Messages delivered again after a restart or rebalance whose effect was already applied;"
    " skipped, and not counted as consumed.",
)
BACKFILLED = Counter(
    "mailstream_events_backfilled_total",
    "Messages the consumer skipped that were read back directly from the events topic.",
)
WORKFLOW_TRANSITIONS = Counter(
    "mailstream_workflow_transitions_total",
    "Enrollment transitions by workflow: enrolled, completed, exited_goal, exited, timed_out,"
    " wait_for_matched, step_limit, dropped, context_refreshed (the trigger again while"
    " enrolled).",
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
SUPPRESSION_LIST_SIZE = Gauge(
    "mailstream_suppression_list_addresses",
    "Addresses on the global suppression list held by this worker.",
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
    " quota_dropped (marketing beyond the tenant's sends per day), by tenant.",
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
    " (missing_signature, bad_signature, stale, replayed, unauthorized, not_json, bad_shape,"
    " too_large, not_configured).",
    ["provider", "result"],
)
FEEDBACK = Counter(
    "mailstream_feedback_total",
    "Feedback events by kind and what they did: hard_bounce, complaint, unsubscribe"
    " (suppressions), soft_bounce, delivered, open, click, no_change, duplicate, no_user,"
    " suppressed_by_address.",
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
TIMERS_PENDING = Gauge(
    "mailstream_timers_pending",
    "Timers (waits, inactivity checks, held sends) pending in this worker's partitions,"
    " as last counted.",
)
TENANT_QUOTA = Counter(
    "mailstream_tenant_quota_total",
    "What a tenant's quota held back, by tenant, quota (events_per_second, sends_per_day)"
    " and action (throttled, deferred, dropped).",
    ["tenant", "quota", "action"],
)
