"""The one outbound effect of the webhook step: a signed POST to an endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from mailstream.config.webhooks_out_settings import Endpoint
from mailstream.providers.base import SendFailure
from mailstream.providers.http_common import HttpRequest, HttpSession, read_json
from mailstream.webhooks_out.call_state import answer_failure
from mailstream.webhooks_out.json_body import MAX_BODY_BYTES
from mailstream.webhooks_out.signature import request_headers


@dataclass(frozen=True, slots=True)
class CallResult:
    failure: SendFailure | None  # None: the endpoint took it (2xx)
    answer: dict[str, Any] | None = None  # the JSON object it answered, if any
    status: int | None = None  # the HTTP status, if it answered


class WebhookClient:
    """One pooled session per endpoint, each with the endpoint's timeout."""

    def __init__(self, endpoints: dict[str, Endpoint]) -> None:
        self.endpoints = endpoints
        self._sessions = {name: HttpSession(e.url, e.timeout) for name, e in endpoints.items()}

    async def start(self) -> None:
        for session in self._sessions.values():
            await session.start()

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    async def call(self, endpoint: Endpoint, command: dict[str, Any], attempt: int) -> CallResult:
        """POST the command's body, signed at this moment; never raises for an HTTP or
        network problem (those come back as the failure)."""
        body = orjson.dumps(command["body"])
        if len(body) > MAX_BODY_BYTES:  # never signed nor sent, however it got queued
            reason = f"the body is {len(body)} bytes, over the {MAX_BODY_BYTES}-byte limit"
            return CallResult(SendFailure("body_too_large", reason, retryable=False))
        now = datetime.now(UTC)
        headers = request_headers(
            endpoint.secret, command["webhook_id"], attempt, int(now.timestamp()), body
        )
        try:
            response = await self._sessions[endpoint.name].post(HttpRequest("", headers, body))
        except SendFailure as exc:
            return CallResult(exc)
        failure = answer_failure(response.status, response.headers, response.body, now)
        answer = read_json(response.body) if failure is None else None
        return CallResult(failure, answer, response.status)
