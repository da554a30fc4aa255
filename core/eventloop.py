"""The event loop every wacrm process runs on: uvloop where it is installed, else asyncio's own.

uvloop is a drop-in implementation of the asyncio loop (libuv underneath); the webhook, the
worker (faust and its consumer thread included) and the HTTP stand-ins spend much of their
CPU in the loop's socket handling, and uvloop does that work in C. ``WACRM_EVENT_LOOP=asyncio``
keeps the standard loop, for comparison or if a platform's uvloop misbehaves.
"""

from __future__ import annotations

import asyncio
import os


def install() -> str:
    """Make every loop created from now on a uvloop loop, when possible; returns the loop's name."""
    if os.environ.get("WACRM_EVENT_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:  # not installed (e.g. Windows): the standard loop does the same work, slower
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
