"""Keeps this worker's copy of the global suppression list (by address) current."""

from __future__ import annotations

import asyncio

from mailstream.runtime.components import Runtime


def register(rt: Runtime) -> None:
    suppression_list = rt.suppression_list

    async def follow_suppression_list() -> None:
        await suppression_list.start()
        try:
            await asyncio.Event().wait()
        finally:
            await suppression_list.stop()

    rt.app.task(follow_suppression_list)
