"""``POST /api/users/{user_id}/suppressions/lift``: an operator lifts a user's
suppressions, saying why (mailstream.suppression.lifecycle says who may lift what)."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

from mailstream.feedback.provider_webhooks import Claim
from mailstream.runtime.components import Runtime
from mailstream.suppression.lift_requests import BadLift, lift_request
from mailstream.web.feedback_views import problem, publish
from mailstream.web.request_body import read_body
from mailstream.web.routes import Views, refused

logger = logging.getLogger(__name__)

MAX_LIFT_BODY = 8192


def register(rt: Runtime, views: Views) -> None:
    app, topics = rt.app, rt.config.topics

    class LiftSuppressions(View):
        """POST /api/users/{user_id}/suppressions/lift, with the admin token as a bearer
        header (not a session cookie: no form of another site can make a browser send
        it): ``{"reason": "why", "only": "hard_bounce", "tenant": "acme"}``, ``only``
        and ``tenant`` optional. 202 once the broker has the request; the user's worker
        applies it (mailstream.suppression.lifecycle)."""

        async def post(self, request: Request, user_id: str) -> Response:
            http: Any = request
            if not views.auth.bearer_ok(http.headers.get("Authorization")):
                return refused(self)
            body = await read_body(http.content, MAX_LIFT_BODY)
            if body is None:
                return problem(self, 413, "too_large", f"the body is over {MAX_LIFT_BODY} bytes")
            try:
                doc = orjson.loads(body or b"{}")
                if not isinstance(doc, dict):
                    raise BadLift("the body must be a JSON object")
                fb = lift_request(
                    user_id,
                    doc.get("tenant"),
                    doc.get("reason"),
                    doc.get("only"),
                    "api",
                    int(time.time() * 1000),
                )
            except orjson.JSONDecodeError as exc:
                return problem(self, 400, "bad_request", f"the body is not JSON: {exc}")
            except BadLift as exc:
                return problem(self, 400, "bad_request", str(exc))
            await publish(app, topics, [Claim((fb,))])
            logger.info(
                "suppressions of user %r: a lift was asked for through the API", user_id[:80]
            )
            return self.json(
                {"user_id": user_id, "only": fb.lifts, "request": fb.event_id}, status=202
            )

    app.page("/api/users/{user_id}/suppressions/lift")(LiftSuppressions)
