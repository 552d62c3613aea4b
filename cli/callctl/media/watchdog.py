"""Devices that stop mid-call: noticed, reported, reopened — the call goes on.

A microphone or speaker that stops delivering (unplugged) goes silent,
``device.lost`` is reported, and it is reopened every ``REOPEN_EVERY_S``
until that works (``device.restored``).  Every source and sink takes part
through the ``Endpoint`` contract (``stalled()``, ``reopen()``); files and
tones never stall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from callctl.media.audio import AudioSource, Endpoint

log = logging.getLogger("callctl.media")

#: How often stalled devices are looked for, and how often a lost one is retried.
POLL_S = 0.5
REOPEN_EVERY_S = 2.0
#: Opening a device blocks (in a thread); one that hangs counts as still gone.
REOPEN_TIMEOUT_S = 5.0

#: ("device.lost" | "device.restored", {"device": name, "kind": "mic" | "speaker"})
DeviceReport = Callable[[str, dict[str, str]], None]


async def watch_devices(endpoints: Sequence[Endpoint], report: DeviceReport) -> None:
    """Run until cancelled: report and reopen endpoints that stall."""
    lost: dict[Endpoint, float] = {}
    while True:
        await asyncio.sleep(POLL_S)
        now = time.monotonic()
        for endpoint in endpoints:
            fields = {"device": endpoint.device_name,
                      "kind": "mic" if isinstance(endpoint, AudioSource) else "speaker"}
            if endpoint not in lost:
                if endpoint.stalled():
                    lost[endpoint] = 0.0
                    log.warning("%s stopped delivering: lost", endpoint.name)
                    report("device.lost", fields)
                continue
            if now - lost[endpoint] < REOPEN_EVERY_S:
                continue
            lost[endpoint] = now
            try:  # opening a device blocks: not on the event loop
                await asyncio.wait_for(asyncio.to_thread(endpoint.reopen), REOPEN_TIMEOUT_S)
            except Exception as exc:
                log.info("%s still gone: %s", endpoint.name, exc)
                continue
            del lost[endpoint]
            report("device.restored", fields)
