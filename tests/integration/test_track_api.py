"""Events over HTTP on a real worker: Segment-shaped track, identify and batch calls
reach the users as Kafka events do, once each; a bad call gets a 400 naming its field,
and a request without the key, too large or too fast is refused."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson

from tests.integration.harness import Deployment, Worker, metric_sum, wait_for

WRITE_KEY = "write-key-for-the-http-tests"
BASIC = {"Authorization": "Basic " + base64.b64encode(WRITE_KEY.encode() + b":").decode()}


async def call(worker: Worker, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(worker.url + path, data=raw, headers=headers) as resp:
            return resp.status, (await resp.json(content_type=None), dict(resp.headers))


async def test_track_identify_and_batch_reach_the_users_once_and_bad_calls_are_refused(
    deployment: Deployment,
) -> None:
    deployment.overrides["http_ingest"] = {
        "enabled": True,
        "events_per_second": 2,
        "burst": 20,
        "max_body_bytes": 4096,
    }
    worker = deployment.worker("a")
    worker.env["MAILSTREAM_WRITE_KEY"] = WRITE_KEY
    worker.start()
    await deployment.wait_ready([worker])

    identify = {"userId": "ada", "traits": {"email": "ada@example.com", "plan": "pro"}}
    assert (await call(worker, "/v1/identify", identify, {}))[0] == 401
    bearer = {"Authorization": "Bearer not-the-key-at-all"}
    assert (await call(worker, "/v1/identify", identify, bearer))[0] == 401
    status, (body, _) = await call(worker, "/v1/identify", identify, BASIC)
    assert (status, body) == (200, {"success": True, "accepted": 1})
    signup = {"userId": "ada", "event": "signup", "messageId": "m-1", "properties": {"a": 1}}
    assert (await call(worker, "/v1/track", signup, BASIC))[0] == 200
    assert (await call(worker, "/v1/track", signup, BASIC))[0] == 200  # sent twice: once
    views = [{"type": "track", "userId": "bob", "event": "page_viewed"}] * 2
    batch = {"batch": [{"type": "identify", "userId": "bob", "traits": {"plan": "free"}}, *views]}
    status, (body, _) = await call(worker, "/v1/batch", batch, BASIC)
    assert (status, body["accepted"]) == (200, 3)

    status, (body, _) = await call(worker, "/v1/track", {"userId": "ada"}, BASIC)
    assert status == 400 and body["detail"].startswith("event:"), body
    bad = {"batch": [views[0], {"type": "track", "userId": "bob", "event": "a b"}]}
    status, (body, _) = await call(worker, "/v1/batch", bad, BASIC)
    assert status == 400 and body["detail"].startswith("batch[1].event"), body
    status, (body, _) = await call(worker, "/v1/track", b"{not json", BASIC)
    assert status == 400 and body["error"] == "not_json"
    huge = {"userId": "ada", "event": "x", "properties": {"pad": "x" * 5000}}
    assert (await call(worker, "/v1/track", huge, BASIC))[0] == 413

    # 20 at once, 2 a second after: the 6 taken above and 10 more fit, 10 more do not
    more = {"batch": [views[0]] * 10}
    assert (await call(worker, "/v1/batch", more, BASIC))[0] == 200
    status, (body, headers) = await call(worker, "/v1/batch", {"batch": [views[0]] * 10}, BASIC)
    assert status == 429 and int(headers["Retry-After"]) >= 1, body

    async def arrived() -> Any:
        _, ada = await worker.get("/api/users/ada")
        _, bob = await worker.get("/api/users/bob")
        return ada.get("events"), ada.get("traits", {}).get("plan"), bob.get("events")

    expected = ({"signup": 1}, "pro", {"page_viewed": 12})
    await wait_for(lambda: _equal(arrived(), expected), 30, "the events over HTTP applied")
    m = await worker.metrics()
    counted = {
        result: metric_sum(m, "mailstream_http_events_total", result=result)
        for result in ("accepted", "invalid", "unauthorized", "too_large", "rate_limited")
    }
    assert counted == {
        "accepted": 16,
        "invalid": 3,
        "unauthorized": 2,
        "too_large": 1,
        "rate_limited": 10,
    }


async def _equal(got: Any, expected: Any) -> bool:
    return await got == expected
