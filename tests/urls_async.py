"""The test site plus an async view that calls Slice from many coroutines at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from slice_connect.client import AsyncSliceClient

#: How often the watchdog coroutine wakes up to measure how long the loop was blocked.
TICK = 0.002


async def burst(request: HttpRequest, user_id: int, calls: int) -> JsonResponse:
    """Run ``calls`` coroutines, each with its own AsyncSliceClient for the same user.

    A watchdog coroutine measures how long the event loop could not run it, twice: in
    wall-clock time (which includes the loop thread waiting for a CPU on a loaded machine,
    or for the interpreter lock while worker threads run the ORM), and in the loop thread's
    own CPU time (the time the loop was busy running callbacks: blocked by our code).
    """
    user = await get_user_model().objects.aget(pk=user_id)
    longest = longest_cpu = 0.0
    done = asyncio.Event()

    async def watchdog() -> None:
        nonlocal longest, longest_cpu
        while not done.is_set():
            before, before_cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(TICK)
            longest = max(longest, time.monotonic() - before - TICK)
            longest_cpu = max(longest_cpu, time.thread_time() - before_cpu)

    async def one() -> Any:
        async with AsyncSliceClient(user) as client:
            return await client.get("users/self")

    watching = asyncio.create_task(watchdog())
    await asyncio.sleep(0)  # let the watchdog start before the burst
    results = await asyncio.gather(*(one() for _ in range(calls)), return_exceptions=True)
    done.set()
    await watching
    return JsonResponse(
        {
            "ok": sum(1 for r in results if isinstance(r, dict) and "result" in r),
            "errors": [type(r).__name__ for r in results if isinstance(r, BaseException)],
            "longest_stall_ms": round(longest * 1000, 2),
            "longest_busy_ms": round(longest_cpu * 1000, 2),
        }
    )


urlpatterns = [
    path("burst/<int:user_id>/<int:calls>/", burst),
    path("", include("tests.urls")),
]
