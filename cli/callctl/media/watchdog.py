"""Devices that stop mid-call: noticed, reported, reopened — the call goes on.

A microphone or speaker that stops delivering (unplugged), or that was not
there when the call started, goes silent, ``device.lost`` is reported, and it
is reopened every ``REOPEN_EVERY_S`` until that works (``device.restored``,
naming the device now open: a card that came back under another name the
wanted one is part of is found, see ``devices.rescan``).  Every source and
sink takes part through the ``Endpoint`` contract (``stalled()``,
``reopen()``); files and tones never stall.

A sink that gave up for good (a recording on a full disk) says why in its
``failure`` attribute: that is reported once, as a ``warning``.
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
#: or ("warning", {"message": why}) for an endpoint that gave up (``failure``).
DeviceReport = Callable[[str, dict[str, str]], None]


def _fields(endpoint: Endpoint) -> dict[str, str]:
    return {"device": endpoint.device_name,
            "kind": "mic" if isinstance(endpoint, AudioSource) else "speaker"}


async def watch_devices(endpoints: Sequence[Endpoint], report: DeviceReport) -> None:
    """Run until cancelled: report and reopen endpoints that stall; report those that fail."""
    lost: dict[Endpoint, float] = {}
    failed: set[Endpoint] = set()
    while True:
        await asyncio.sleep(POLL_S)
        now = time.monotonic()
        for endpoint in endpoints:
            failure = getattr(endpoint, "failure", None)
            if failure and endpoint not in failed:
                failed.add(endpoint)
                report("warning", {"message": str(failure)})
            if endpoint not in lost:
                if endpoint.stalled():
                    lost[endpoint] = 0.0
                    log.warning("%s stopped delivering: lost", endpoint.name)
                    report("device.lost", _fields(endpoint))
                continue
            if now - lost[endpoint] < REOPEN_EVERY_S:
                continue
            lost[endpoint] = now
            was = endpoint.name
            try:  # opening a device blocks: not on the event loop
                await asyncio.wait_for(asyncio.to_thread(endpoint.reopen), REOPEN_TIMEOUT_S)
            except Exception as exc:
                log.info("%s still gone: %s", endpoint.name, exc)
                continue
            del lost[endpoint]
            log.warning("%s is back%s", was, f" as {endpoint.name}" if endpoint.name != was else "")
            report("device.restored", _fields(endpoint))
