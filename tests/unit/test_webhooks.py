"""Provider webhooks: the providers' documented sample payloads to Feedback, and requests
signed with real keys made here (ECDSA P-256, HMAC-SHA256, basic auth)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from mailstream.exceptions import ConfigError
from mailstream.feedback.normalised import (
    BOUNCE,
    CLICK,
    COMPLAINT,
    DEFERRED,
    DELIVERED,
    OPEN,
    UNSUBSCRIBE,
    Feedback,
)
from mailstream.feedback.provider_webhooks import (
    MailgunWebhook,
    MailgunWebhookSettings,
    PostmarkWebhook,
    PostmarkWebhookSettings,
    SendGridWebhook,
    SendGridWebhookSettings,
    WebhookRejected,
    WebhookRequest,
    build_webhooks,
    feedback_of,
)
from tests.fakes.webhook_signing import (
    mailgun_signature,
    mailgun_signed_body,
    postmark_auth,
    sendgrid_keypair,
    sendgrid_sign,
)

SAMPLES = Path(__file__).parent / "webhook_samples"
NOW = 1_700_000_000.0
JSON = "application/json"
IDS: dict[str, Any] = {"send_id": "s-1", "user_id": "u-42", "tenant_id": "acme"}
NO_IDS: dict[str, Any] = {"send_id": None, "user_id": None, "tenant_id": None}

MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
POSTMARK_USER, POSTMARK_PASSWORD = "hook-user", "s3cr3t-p4ss:with:colons"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def rejected(call: Any, *args: Any) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        call(*args)
    return caught.value


# --------------------------------------------------------------------------- SendGrid


@pytest.fixture(scope="module")
def sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    return sendgrid_keypair()


def sendgrid_handler(public_key: str, **settings: Any) -> SendGridWebhook:
    return SendGridWebhook(
        SendGridWebhookSettings(**settings), {"SENDGRID_WEBHOOK_PUBLIC_KEY": public_key}
    )


def sendgrid_request(private_key: Any, body: bytes, at: float = NOW) -> WebhookRequest:
    return WebhookRequest(sendgrid_sign(private_key, body, at), body, JSON)


SG: dict[str, Any] = {"provider": "sendgrid", "at": 1513299569000, "email": "example@test.com"}
SG_DOCS: dict[str, Any] = {**SG, **IDS, "event_id": "sg_event_id"}
SG_ONE: dict[str, Any] = {**SG, **NO_IDS, "event_id": "6g4ZI7SA-xmRDv57GoPIPw=="}

SENDGRID_SAMPLES = [
    (
        "sendgrid_events.json",  # processed and group_resubscribe are not feedback
        [
            Feedback(kind=DEFERRED, reason="400 try again later", **SG_DOCS),
            Feedback(kind=DELIVERED, **SG_DOCS),
            Feedback(kind=OPEN, **SG_DOCS),
            Feedback(kind=CLICK, url="http://www.sendgrid.com/", **SG_DOCS),
            Feedback(kind=BOUNCE, bounce="hard", reason="5.0.0 500 unknown recipient", **SG_DOCS),
            Feedback(kind=BOUNCE, bounce="hard", reason="dropped: Bounced Address", **SG_DOCS),
            Feedback(kind=COMPLAINT, **SG_DOCS),
            Feedback(kind=UNSUBSCRIBE, **SG_DOCS),
            Feedback(kind=UNSUBSCRIBE, reason="unsubscribe group 10", **SG_DOCS),
        ],
    ),
    (
        "sendgrid_bounce_and_blocked.json",
        [
            Feedback(kind=BOUNCE, bounce="hard", reason="5.0.0 500 unknown recipient", **SG_ONE),
            Feedback(kind=BOUNCE, bounce="soft", reason="5.0.0 500 unknown recipient", **SG_ONE),
        ],
    ),
    (
        "sendgrid_unique_args.json",  # "Processed", capitalised, is no event we know
        [
            Feedback(
                kind=CLICK,
                provider="sendgrid",
                at=1249948800000,
                email="email@example.com",
                send_id="s-7",
                user_id="u-7",
                tenant_id="acme",
                url="http://yourdomain.com/blog/news.html",
                event_id="sendgrid_internal_event_id",
            )
        ],
    ),
]


@pytest.mark.parametrize(("name", "expected"), SENDGRID_SAMPLES)
def test_sendgrid_documented_samples(
    sendgrid_keys: tuple[Any, str], name: str, expected: list[Feedback]
) -> None:
    private_key, public_key = sendgrid_keys
    body = sample(name)
    assert (
        feedback_of(sendgrid_handler(public_key).handle(sendgrid_request(private_key, body), NOW))
        == expected
    )


def _sendgrid_event(**fields: Any) -> bytes:
    event = {"email": "Ada@Example.COM", "timestamp": 1513299569, "event": "bounce", **fields}
    return json.dumps([event]).encode()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"event": "dropped", "reason": "Unsubscribed Address"}, (UNSUBSCRIBE, None)),
        ({"event": "dropped", "reason": "Spam Reporting Address"}, (COMPLAINT, None)),
        ({"event": "dropped", "reason": "Invalid SMTPAPI header"}, None),
        ({"event": "open", "sg_machine_open": True}, (OPEN, None)),
        ({"event": "group_resubscribe"}, None),
        ({"event": "account_status_change"}, None),
        ({"event": "bounce", "type": "blocked"}, (BOUNCE, "soft")),
        ({"event": "bounce", "timestamp": "1513299569"}, (BOUNCE, "hard")),
    ],
)
def test_sendgrid_event_kinds(
    sendgrid_keys: tuple[Any, str], event: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    private_key, public_key = sendgrid_keys
    body = _sendgrid_event(**event)
    found = feedback_of(
        sendgrid_handler(public_key).handle(sendgrid_request(private_key, body), NOW)
    )
    assert [(f.kind, f.bounce) for f in found] == ([expected] if expected else [])
    assert all(f.email == "ada@example.com" and f.at == 1513299569000 for f in found)


def test_sendgrid_reason_is_trimmed_and_machine_opens_said(sendgrid_keys: tuple[Any, str]) -> None:
    private_key, public_key = sendgrid_keys
    handler = sendgrid_handler(public_key)
    body = _sendgrid_event(reason="550 " + "x" * 1000)
    [bounce] = feedback_of(handler.handle(sendgrid_request(private_key, body), NOW))
    assert len(bounce.reason) == 500 and bounce.reason.startswith("550 xxx")
    body = _sendgrid_event(event="open", sg_machine_open=True)
    [opened] = feedback_of(handler.handle(sendgrid_request(private_key, body), NOW))
    assert opened.reason == "machine open"


def _tamper(private_key: Any, body: bytes) -> WebhookRequest:
    headers = sendgrid_sign(private_key, body, NOW)
    return WebhookRequest(headers, body.replace(b"bounce", b"delivered"), JSON)


def _drop(private_key: Any, body: bytes, header: str) -> WebhookRequest:
    headers = sendgrid_sign(private_key, body, NOW)
    del headers[header]
    return WebhookRequest(headers, body, JSON)


SIG = "X-Twilio-Email-Event-Webhook-Signature"
STAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key, body: sendgrid_request(sendgrid_keypair()[0], body), "bad_signature"),
        (_tamper, "bad_signature"),
        (lambda key, body: sendgrid_request(key, body, NOW - 301), "stale"),
        (lambda key, body: sendgrid_request(key, body, NOW + 301), "stale"),
        (lambda key, body: WebhookRequest({}, body, JSON), "missing_signature"),
        (lambda key, body: _drop(key, body, SIG), "missing_signature"),
        (lambda key, body: _drop(key, body, STAMP), "missing_signature"),
        (
            lambda key, body: WebhookRequest({SIG: "not base64!", STAMP: "1"}, body, JSON),
            "bad_signature",
        ),
        (
            lambda key, body: WebhookRequest({SIG: "MEUCIQ==", STAMP: "soon"}, body, JSON),
            "bad_signature",
        ),
    ],
    ids=["wrong_key", "altered_body", "stale", "future", "no_headers", "no_sig", "no_stamp",
         "garbage_sig", "bad_stamp"],
)  # fmt: skip
def test_sendgrid_refuses(sendgrid_keys: tuple[Any, str], make: Any, reason: str) -> None:
    private_key, public_key = sendgrid_keys
    request = make(private_key, _sendgrid_event())
    refused = rejected(sendgrid_handler(public_key).handle, request, NOW)
    assert (refused.status, refused.reason) == (401, reason)


def test_sendgrid_accepts_the_edges_of_max_age_and_lowercase_headers(
    sendgrid_keys: tuple[Any, str],
) -> None:
    private_key, public_key = sendgrid_keys
    handler = sendgrid_handler(public_key, max_age="1m")
    body = _sendgrid_event()
    for at in (NOW - 60, NOW + 60):
        headers = {k.lower(): v for k, v in sendgrid_sign(private_key, body, at).items()}
        assert len(feedback_of(handler.handle(WebhookRequest(headers, body, JSON), NOW))) == 1
    refused = rejected(handler.handle, sendgrid_request(private_key, body, NOW - 61), NOW)
    assert refused.reason == "stale"


def test_sendgrid_takes_a_pem_public_key(sendgrid_keys: tuple[Any, str]) -> None:
    private_key, _ = sendgrid_keys
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = _sendgrid_event()
    found = feedback_of(
        sendgrid_handler(pem.decode()).handle(sendgrid_request(private_key, body), NOW)
    )
    assert len(found) == 1


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        (b"[{", "not_json", "not JSON"),
        (b'{"event": "bounce"}', "bad_shape", "JSON array"),
        (b"[1]", "bad_shape", "event [0]: must be an object"),
        (b'[{"event": "bounce", "timestamp": 1}]', "bad_shape", "event [0] (bounce): 'email'"),
        (b'[{"event": "open", "email": "a@b.c"}]', "bad_shape", "'timestamp'"),
        (b'[{"email": "a@b.c", "timestamp": 1}]', "bad_shape", "event [0]: 'event'"),
    ],
)
def test_sendgrid_refuses_bodies_it_cannot_read(
    sendgrid_keys: tuple[Any, str], body: bytes, reason: str, detail: str
) -> None:
    private_key, public_key = sendgrid_keys
    refused = rejected(
        sendgrid_handler(public_key).handle, sendgrid_request(private_key, body), NOW
    )
    assert (refused.status, refused.reason) == (400, reason)
    assert detail in refused.detail


def test_sendgrid_key_problems_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"webhooks\.sendgrid\.public_key_env.*SG_KEY is not set"):
        SendGridWebhook(SendGridWebhookSettings(public_key_env="SG_KEY"), {})
    rsa_like = base64.b64encode(b"not a key at all, but secret-ish").decode()
    with pytest.raises(ConfigError, match="ECDSA P-256") as caught:
        SendGridWebhook(SendGridWebhookSettings(), {"SENDGRID_WEBHOOK_PUBLIC_KEY": rsa_like})
    assert rsa_like not in str(caught.value)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigError, match="ECDSA P-256"):
        sendgrid_handler(base64.b64encode(der).decode())


# --------------------------------------------------------------------------- Mailgun


def mailgun_handler(**settings: Any) -> MailgunWebhook:
    return MailgunWebhook(
        MailgunWebhookSettings(**settings), {"MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}
    )


def mailgun_request(
    doc: dict[str, Any], at: float | str = NOW, token: str = "t" * 50, key: str = MAILGUN_KEY
) -> WebhookRequest:
    signed = {**doc, "signature": mailgun_signature(key, at, token)}
    return WebhookRequest({"Content-Type": JSON}, json.dumps(signed).encode(), JSON)


MG: dict[str, Any] = {"provider": "mailgun", "email": "alice@example.com", **IDS}
OVER_QUOTA = (
    "generic: 452 4.2.2 The email account that you tried to reach is over quota. Please "
    "direct 4.2.2 the recipient to 4.2.2 https://support.example.com/mail/?p=422"
)

MAILGUN_SAMPLES = [
    (
        "mailgun_delivered.json",
        Feedback(kind=DELIVERED, at=1521472262908, event_id="CPgfbmQMTCKtHW6uIWtuVe", **MG),
    ),
    (
        "mailgun_failed_permanent.json",
        Feedback(
            kind=BOUNCE,
            bounce="hard",
            at=1521233195376,
            reason="suppress-bounce: 605 Not delivering to previously bounced address",
            event_id="G9Bn5sl1TC6nu79C8C0bwg",
            **MG,
        ),
    ),
    (
        "mailgun_failed_temporary.json",
        Feedback(
            kind=DEFERRED,
            at=1521472262908,
            reason=OVER_QUOTA,
            event_id="Fs7-5t81S2ispqxqDw2U4Q",
            **MG,
        ),
    ),
    (
        "mailgun_opened.json",
        Feedback(kind=OPEN, at=1521243339874, event_id="Ase7i2zsRYeDXztHGENqRA", **MG),
    ),
    (
        "mailgun_clicked.json",
        Feedback(
            kind=CLICK,
            at=1521243339874,
            url="http://mailgun.net",
            event_id="Ase7i2zsRYeDXztHGENqRA",
            **MG,
        ),
    ),
    (
        "mailgun_complained.json",
        Feedback(kind=COMPLAINT, at=1521233123501, event_id="-Agny091SquKnsrW2NEKUA", **MG),
    ),
    (
        "mailgun_unsubscribed.json",
        Feedback(kind=UNSUBSCRIBE, at=1521243339874, event_id="Ase7i2zsRYeDXztHGENqRA", **MG),
    ),
]


@pytest.mark.parametrize(("name", "expected"), MAILGUN_SAMPLES)
def test_mailgun_documented_samples(name: str, expected: Feedback) -> None:
    doc = json.loads(sample(name))  # re-signed: the samples' signatures use Mailgun's key
    assert feedback_of(mailgun_handler().handle(mailgun_request(doc), NOW)) == [expected]


def _failed(**fields: Any) -> dict[str, Any]:
    doc = json.loads(sample("mailgun_failed_permanent.json"))
    doc["event-data"].update(fields)
    return doc


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_failed(reason="bounce", **{"delivery-status": {"code": 550}}), (BOUNCE, "hard")),
        # Mailgun gave up after retrying: the last answer was a 4xx
        (_failed(reason="old", **{"delivery-status": {"code": 421}}), (BOUNCE, "soft")),
        (_failed(**{"delivery-status": {"code": "550", "bounce-type": "soft"}}), (BOUNCE, "soft")),
        (_failed(reason="suppress-unsubscribe"), (UNSUBSCRIBE, None)),
        (_failed(reason="suppress-complaint"), (COMPLAINT, None)),
        (_failed(severity="temporary", reason="bounce"), (DEFERRED, None)),
        (_failed(severity="someday"), None),
        (_failed(event="accepted"), None),
        (_failed(event="stored"), None),
    ],
)
def test_mailgun_failure_kinds(doc: dict[str, Any], expected: tuple[str, str] | None) -> None:
    found = feedback_of(mailgun_handler().handle(mailgun_request(doc), NOW))
    assert [(f.kind, f.bounce) for f in found] == ([expected] if expected else [])


def test_mailgun_accepts_a_parent_signature_and_an_integer_timestamp() -> None:
    handler = mailgun_handler()
    doc = json.loads(sample("mailgun_delivered.json"))
    block = mailgun_signature(MAILGUN_KEY, NOW, "p" * 50)
    # a subaccount's own signature (under a key we do not have) beside the parent's
    doc["signature"] = {**block, "signature": "0" * 64, "parent-signature": block["signature"]}
    assert (
        len(feedback_of(handler.handle(WebhookRequest({}, json.dumps(doc).encode(), JSON), NOW)))
        == 1
    )
    doc["signature"] = {**mailgun_signature(MAILGUN_KEY, NOW, "i" * 50), "timestamp": int(NOW)}
    assert (
        len(feedback_of(handler.handle(WebhookRequest({}, json.dumps(doc).encode(), JSON), NOW)))
        == 1
    )


def test_mailgun_signed_body_helper_verifies() -> None:
    event_data = json.loads(sample("mailgun_opened.json"))["event-data"]
    body = mailgun_signed_body(MAILGUN_KEY, event_data, NOW, "h" * 50)
    [found] = feedback_of(mailgun_handler().handle(WebhookRequest({}, body, JSON), NOW))
    assert found.kind == OPEN


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda doc: mailgun_request(doc, key="key-wrong"), "bad_signature"),
        (lambda doc: mailgun_request(doc, at=NOW - 301), "stale"),
        (lambda doc: mailgun_request(doc, at=NOW + 301), "stale"),
        (lambda doc: mailgun_request({**doc, "event-data": {"event": "x"}}), None),
        (
            lambda doc: WebhookRequest({}, json.dumps({"event-data": {}}).encode(), JSON),
            "missing_signature",
        ),
        (
            lambda doc: WebhookRequest(
                {},
                json.dumps({**doc, "signature": {"timestamp": "1", "token": "t"}}).encode(),
                JSON,
            ),
            "missing_signature",
        ),
    ],
    ids=["invalid", "stale", "future", "signed_other_event", "no_block", "no_signature"],
)
def test_mailgun_refuses(make: Any, reason: str | None) -> None:
    request = make(json.loads(sample("mailgun_delivered.json")))
    if reason is None:  # the signature covers only timestamp + token, never the event
        assert feedback_of(mailgun_handler().handle(request, NOW)) == []
        return
    refused = rejected(mailgun_handler().handle, request, NOW)
    assert (refused.status, refused.reason) == (401, reason)


def test_mailgun_claims_its_token_until_the_signature_goes_stale() -> None:
    handler = mailgun_handler(max_age=300)
    doc = json.loads(sample("mailgun_delivered.json"))
    [claim] = handler.handle(mailgun_request(doc, at=NOW - 100, token="r" * 50), NOW)
    assert claim.key == "mailgun:" + "r" * 50
    assert (claim.received, claim.until) == (NOW * 1000, (NOW + 200) * 1000 + 1)
    assert [fb.kind for fb in claim.feedback] == [DELIVERED]
    # the same signature block with another body claims the same key: one is let through
    doc["event-data"]["recipient"] = "someone-else@example.com"
    [again] = handler.handle(mailgun_request(doc, at=NOW - 100, token="r" * 50), NOW + 199)
    assert again.key == claim.key and again.received < again.until


def test_mailgun_claims_the_token_of_an_event_it_ignores() -> None:
    doc = json.loads(sample("mailgun_delivered.json"))
    doc["event-data"]["event"] = "accepted"
    [claim] = mailgun_handler().handle(mailgun_request(doc, token="i" * 50), NOW)
    assert claim.key == "mailgun:" + "i" * 50 and claim.feedback == ()


@pytest.mark.parametrize(
    ("request_", "status", "reason", "detail"),
    [
        (WebhookRequest({}, b"token=x&timestamp=1", "application/x-www-form-urlencoded"),
         400, "not_json", "legacy"),
        (WebhookRequest({}, b"{oops", JSON), 400, "not_json", "not JSON"),
        (WebhookRequest({}, b"[]", JSON), 400, "bad_shape", "'signature' and 'event-data'"),
    ],
)  # fmt: skip
def test_mailgun_refuses_bodies_it_cannot_read(
    request_: WebhookRequest, status: int, reason: str, detail: str
) -> None:
    refused = rejected(mailgun_handler().handle, request_, NOW)
    assert (refused.status, refused.reason) == (status, reason)
    assert detail in refused.detail


@pytest.mark.parametrize(
    ("event_data", "detail"),
    [
        (None, "event-data: must be an object"),
        ({"timestamp": 1, "recipient": "a@b.c"}, "event-data: 'event'"),
        ({"event": "delivered", "timestamp": 1}, "event-data (delivered): 'recipient'"),
        ({"event": "opened", "recipient": "a@b.c"}, "'timestamp' must be epoch seconds"),
        ({"event": "failed", "recipient": "a@b.c", "timestamp": 1}, "'severity'"),
        ({"event": "clicked", "recipient": "a@b.c", "timestamp": 1, "user-variables": []},
         "'user-variables' must be an object"),
    ],
)  # fmt: skip
def test_mailgun_refuses_event_data_it_cannot_read(event_data: Any, detail: str) -> None:
    refused = rejected(mailgun_handler().handle, mailgun_request({"event-data": event_data}), NOW)
    assert (refused.status, refused.reason) == (400, "bad_shape")
    assert detail in refused.detail


# --------------------------------------------------------------------------- Postmark


def postmark_handler() -> PostmarkWebhook:
    env = {
        "POSTMARK_WEBHOOK_USERNAME": POSTMARK_USER,
        "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
    }
    return PostmarkWebhook(PostmarkWebhookSettings(), env)


def postmark_request(
    body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD) if headers is None else headers
    return WebhookRequest(auth, raw, JSON)


PM: dict[str, Any] = {"provider": "postmark", "email": "john@example.com", **IDS}
MESSAGE = "883953f4-6105-42a2-a16a-77a8eac79483"
ZEROS = "00000000-0000-0000-0000-000000000000"

POSTMARK_SAMPLES = [
    (
        "postmark_bounce.json",
        Feedback(
            kind=BOUNCE,
            bounce="hard",
            at=1572971634907,
            reason="HardBounce: Test bounce details",
            event_id=f"{MESSAGE}:Bounce:1572971634907",
            **PM,
        ),
    ),
    (
        "postmark_delivery.json",
        Feedback(
            kind=DELIVERED, at=1572971634907, event_id=f"{MESSAGE}:Delivery:1572971634907", **PM
        ),
    ),
    (
        "postmark_open.json",
        Feedback(kind=OPEN, at=1572971634907, event_id=f"{MESSAGE}:Open:1572971634907", **PM),
    ),
    (
        "postmark_click.json",
        Feedback(
            kind=CLICK,
            at=1508944871907,
            url="https://example.com",
            event_id=f"{ZEROS}:Click:1508944871907",
            **PM,
        ),
    ),
    (
        "postmark_spam_complaint.json",  # its TypeCode 512 is SpamNotification's: go by names
        Feedback(
            kind=COMPLAINT,
            at=1572971634907,
            reason="Test spam complaint details",
            event_id=f"{ZEROS}:SpamComplaint:1572971634907",
            **PM,
        ),
    ),
    (
        "postmark_subscription_change.json",  # Postmark suppressing after a hard bounce
        Feedback(
            kind=BOUNCE,
            bounce="hard",
            at=1580554414416,
            reason="HardBounce (by Recipient)",
            event_id=f"{MESSAGE}:SubscriptionChange:1580554414416",
            **{**PM, "email": "bounced-address@wildbit.com"},
        ),
    ),
]


@pytest.mark.parametrize(("name", "expected"), POSTMARK_SAMPLES)
def test_postmark_documented_samples(name: str, expected: Feedback) -> None:
    assert feedback_of(postmark_handler().handle(postmark_request(sample(name)), NOW)) == [expected]


def _bounce(**fields: Any) -> dict[str, Any]:
    return {**json.loads(sample("postmark_bounce.json")), **fields}


@pytest.mark.parametrize(
    ("bounce_type", "expected"),
    [
        ("HardBounce", (BOUNCE, "hard")),
        ("BadEmailAddress", (BOUNCE, "hard")),
        ("ManuallyDeactivated", (BOUNCE, "hard")),
        ("SoftBounce", (BOUNCE, "soft")),
        ("DnsError", (BOUNCE, "soft")),
        ("Blocked", (BOUNCE, "soft")),
        ("SpamNotification", (BOUNCE, "soft")),
        ("VirusNotification", (BOUNCE, "soft")),
        ("DMARCPolicy", (BOUNCE, "soft")),
        ("Unknown", (BOUNCE, "soft")),
        ("Transient", (DEFERRED, None)),
        ("SpamComplaint", (COMPLAINT, None)),
        ("Unsubscribe", (UNSUBSCRIBE, None)),
        ("AutoResponder", None),
        ("AddressChange", None),
        ("Subscribe", None),
        ("OpenRelayTest", None),
        ("ChallengeVerification", None),
        ("Unconfirmed", None),
        ("SMTPApiError", None),
        ("InboundError", None),
        ("TemplateRenderingFailed", None),
        ("SomethingNew", None),
    ],
)
def test_postmark_bounce_types(bounce_type: str, expected: tuple[str, str | None] | None) -> None:
    found = feedback_of(postmark_handler().handle(postmark_request(_bounce(Type=bounce_type)), NOW))
    assert [(f.kind, f.bounce) for f in found] == ([expected] if expected else [])


def test_postmark_subscription_changes() -> None:
    handler = postmark_handler()
    change = json.loads(sample("postmark_subscription_change.json"))
    manual = {**change, "SuppressionReason": "ManualSuppression", "MessageID": None}
    [unsubscribed] = feedback_of(handler.handle(postmark_request(manual), NOW))
    assert (
        unsubscribed.kind == UNSUBSCRIBE
        and unsubscribed.reason == "ManualSuppression (by Recipient)"
    )
    assert unsubscribed.event_id == "bounced-address@wildbit.com:SubscriptionChange:1580554414416"
    complaint = {**change, "SuppressionReason": "SpamComplaint"}
    assert [f.kind for f in feedback_of(handler.handle(postmark_request(complaint), NOW))] == [
        COMPLAINT
    ]
    reactivated = {**change, "SuppressSending": False}
    assert feedback_of(handler.handle(postmark_request(reactivated), NOW)) == []


def test_postmark_reads_metadata_leniently_and_lowercases() -> None:
    doc = _bounce(Email="John@Example.COM", Metadata={"user_id": 43})
    [found] = feedback_of(postmark_handler().handle(postmark_request(doc), NOW))
    assert (found.email, found.user_id, found.send_id) == ("john@example.com", "43", None)
    doc = _bounce(BouncedAt="2019-11-05T16:33:54", Metadata=None)  # no offset: UTC
    [found] = feedback_of(postmark_handler().handle(postmark_request(doc), NOW))
    assert found.at == 1572971634000 and found.user_id is None


def _basic(text: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        postmark_auth(POSTMARK_USER, "wrong"),
        postmark_auth("someone", POSTMARK_PASSWORD),
        _basic(POSTMARK_USER + POSTMARK_PASSWORD),
        {"Authorization": "Bearer " + POSTMARK_PASSWORD},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Basic"},
    ],
    ids=["missing", "wrong_password", "wrong_user", "no_colon", "bearer", "garbage", "empty"],
)
def test_postmark_refuses_without_the_right_credentials(headers: dict[str, str]) -> None:
    refused = rejected(
        postmark_handler().handle, postmark_request(sample("postmark_bounce.json"), headers), NOW
    )
    assert (refused.status, refused.reason) == (401, "unauthorized")


def test_postmark_basic_auth_is_case_insensitive_on_names_and_scheme() -> None:
    token = postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD)["Authorization"].split()[1]
    headers = {"authorization": f"basic {token}"}
    assert (
        len(
            feedback_of(
                postmark_handler().handle(
                    postmark_request(sample("postmark_bounce.json"), headers), NOW
                )
            )
        )
        == 1
    )


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        (b"<xml/>", "not_json", "not JSON"),
        (b"[]", "bad_shape", "one JSON object per event"),
        (b'{"Email": "a@b.c"}', "bad_shape", "body: 'RecordType'"),
        (b'{"RecordType": "Bounce", "Type": "HardBounce", "BouncedAt": "2020-01-01T00:00:00Z"}',
         "bad_shape", "Bounce record: 'Email'"),
        (b'{"RecordType": "Open", "Recipient": "a@b.c", "ReceivedAt": "yesterday"}',
         "bad_shape", "ISO 8601"),
        (b'{"RecordType": "SubscriptionChange", "SuppressSending": "true"}',
         "bad_shape", "'SuppressSending'"),
    ],
)  # fmt: skip
def test_postmark_refuses_bodies_it_cannot_read(body: bytes, reason: str, detail: str) -> None:
    refused = rejected(postmark_handler().handle, postmark_request(body), NOW)
    assert (refused.status, refused.reason) == (400, reason)
    assert detail in refused.detail


def test_postmark_ignores_record_types_it_does_not_know() -> None:
    body = {"RecordType": "Inbound", "From": "a@b.c"}
    assert feedback_of(postmark_handler().handle(postmark_request(body), NOW)) == []


# --------------------------------------------------------------------------- shared


def test_secrets_stay_out_of_reprs_and_refusals(sendgrid_keys: tuple[Any, str]) -> None:
    private_key, public_key = sendgrid_keys
    env = {
        "SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
        "POSTMARK_WEBHOOK_USERNAME": POSTMARK_USER,
        "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
    }
    settings: dict[str, Any] = {
        "sendgrid": SendGridWebhookSettings(),
        "mailgun": MailgunWebhookSettings(),
        "postmark": PostmarkWebhookSettings(),
    }
    handlers = build_webhooks(settings, env)
    secrets = [MAILGUN_KEY, POSTMARK_USER, POSTMARK_PASSWORD, public_key]
    shown = [repr(h) + str(h) + repr(vars(h)) for h in handlers.values()]
    refusals = [
        rejected(handlers["mailgun"].handle, mailgun_request({"event-data": {}}, key="key-x"), NOW),
        rejected(
            handlers["postmark"].handle,
            postmark_request(b"{}", postmark_auth(POSTMARK_USER, "x")),
            NOW,
        ),
        rejected(handlers["sendgrid"].handle, sendgrid_request(sendgrid_keypair()[0], b"[]"), NOW),
    ]
    shown += [str(r) + repr(r) + r.detail for r in refusals]
    shown.append(repr(postmark_request(b"{}")))
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert "Authorization" not in repr(postmark_request(b"{}")) or "Basic" not in repr(
        postmark_request(b"{}")
    )


def test_build_webhooks_makes_handlers_for_configured_providers_only() -> None:
    env = {"MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}
    handlers = build_webhooks(
        {"sendgrid": None, "mailgun": MailgunWebhookSettings(), "postmark": None}, env
    )
    assert list(handlers) == ["mailgun"] and handlers["mailgun"].name == "mailgun"
    assert build_webhooks({}, env) == {}


@pytest.mark.parametrize(
    ("settings", "env", "message"),
    [
        ({"postmark": PostmarkWebhookSettings()}, {"POSTMARK_WEBHOOK_USERNAME": "u"},
         r"webhooks\.postmark\.password_env: .*POSTMARK_WEBHOOK_PASSWORD is not set"),
        ({"mailgun": MailgunWebhookSettings(signing_key_env="MG_HOOK")}, {"MG_HOOK": " "},
         r"webhooks\.mailgun\.signing_key_env: .*MG_HOOK is empty"),
        ({"sendgrid": SendGridWebhookSettings()}, {},
         r"webhooks\.sendgrid\.public_key_env: .*SENDGRID_WEBHOOK_PUBLIC_KEY"),
        ({"ses": MailgunWebhookSettings()}, {}, r"webhooks\.ses: no such provider"),
        ({"postmark": MailgunWebhookSettings()}, {}, r"webhooks\.postmark: expected Postmark"),
    ],
)  # fmt: skip
def test_build_webhooks_names_the_config_key(
    settings: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_webhooks(settings, env)


def test_settings_take_names_and_durations() -> None:
    assert MailgunWebhookSettings(max_age="5m").max_age == 300
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        MailgunWebhookSettings(signing_key_env="key-3ax6xnjp29jd6fds4gc373sgvjxteol0!")
    with pytest.raises(ValidationError):
        PostmarkWebhookSettings(password="hunter2")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SendGridWebhookSettings(max_age=0)


def test_settings_import_without_cryptography() -> None:
    code = (
        "import sys, mailstream.config.webhook_settings, mailstream.feedback.provider_webhooks;"
        "assert 'cryptography' not in sys.modules, 'cryptography was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
