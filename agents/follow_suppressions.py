"""Keeps this worker's copy of the global suppression list (by address) current."""

from __future__ import annotations

import asyncio

from mailstream.app import app
from mailstream.runtime.components import suppression_list


@app.task
async def follow_suppression_list() -> None:
    await suppression_list.start()
    try:
        await asyncio.Event().wait()
    finally:
        await suppression_list.stop()
