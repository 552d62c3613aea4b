"""Telling systemd how a ``listen`` service is doing: the sd_notify protocol.

Under a ``Type=notify`` unit systemd passes a datagram socket in
``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace); each
datagram is ``KEY=VALUE`` lines (sd_notify(3)).  What we send:

- ``READY=1`` once the phone is registered with the server (not before);
- ``STATUS=...`` whenever what a person would want to know changes
  (online, ringing, in a call with whom, server lost);
- ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` while ``Phone.health()``
  finds the event loop, the event stream and the call's devices alive:
  a wedged process stops pinging and systemd restarts it;
- ``STOPPING=1`` when the service is told to stop, before the call is hung up.

Without ``NOTIFY_SOCKET`` every call here does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from callctl.engine.events import Ev

log = logging.getLogger("callctl.service")

#: The loop woke up this much later than asked: it is wedged (a blocking call), not busy.
MAX_LOOP_LAG_S = 2.0


class Notifier:
    """One process's end of the notify socket (``NOTIFY_SOCKET``), or nothing without it."""

    def __init__(self, address: str | None = None) -> None:
        from_env = address is None
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        #: Seconds between watchdog pings systemd asked for, or None.
        self.watchdog = watchdog_interval() if address else None
        if from_env:  # ours alone: hooks and other children must not speak for us
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        self.address = ("\0" + address[1:]) if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.sent: list[str] = []  # the last few, for status
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        data = "\n".join(lines).encode()
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:  # systemd gone (stopping), or a full queue: never fatal
            if not self._failed:
                log.warning("cannot notify %s: %s", self.address.replace("\0", "@"), exc)
                self._failed = True
            return
        self._failed = False
        self.sent = [*self.sent[-7:], *lines]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for (``WATCHDOG_USEC``), or None."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (our parent)
    return int(usec) / 2e6


def status_line(event: str, record: dict[str, Any], online: bool) -> str | None:
    """What ``STATUS=`` says after ``event``, or None to leave it as it is."""
    peer = record.get("peer") or "?"
    if event in (Ev.REGISTERED, Ev.SERVER_RESTORED):
        return f"online as {record.get('user')} on {record.get('device')}, waiting for calls"
    if event == Ev.SERVER_LOST:
        return f"server lost ({record.get('message')}); retrying"
    if event == Ev.CALL_INCOMING:
        return f"ringing: call from {peer}"
    if event == Ev.CALL_OUTGOING:
        return f"calling {peer}"
    if event == Ev.CALL_CONNECTED:
        return f"in call with {peer}"
    if event == Ev.CALL_RECONNECTING:
        return f"in call with {peer}: reconnecting"
    if event == Ev.CALL_ENDED:
        tail = "waiting for calls" if online else "offline"
        return f"{tail} (last call: {peer}, {record.get('reason')})"
    if event == Ev.DEVICE_LOST:
        return f"in call with {peer}: {record.get('kind')} {record.get('device')} lost"
    return None


class ServiceLink:
    """READY/STATUS/WATCHDOG/STOPPING for one running phone (a listener of its events)."""

    def __init__(self, notifier: Notifier, health: Callable[[], str | None],
                 online: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.health = health
        self.online = online
        self.ready = False
        self.unhealthy: str | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._peer: str | None = None

    def __call__(self, event: str, record: dict[str, Any]) -> None:
        if record.get("peer"):
            self._peer = record["peer"]
        elif event == Ev.DEVICE_LOST and self._peer:
            record = {**record, "peer": self._peer}
        line = status_line(event, record, self.online())
        if event in (Ev.REGISTERED, Ev.SERVER_RESTORED) and not self.ready:
            self.ready = True
            self.notifier.send("READY=1", f"STATUS={line}")
            return
        if line is not None:
            self.notifier.send(f"STATUS={line}")

    def start(self) -> None:
        interval = self.notifier.watchdog
        if self.notifier.enabled and interval is not None:
            self._watchdog = asyncio.ensure_future(self._ping(interval))

    async def _ping(self, interval: float) -> None:
        # on the event loop on purpose: a loop that stops turning stops the pings
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            lag, last = now - last - interval, now
            problem = self.health()
            if problem is None and lag > MAX_LOOP_LAG_S:
                problem = f"the event loop stalled for {lag:.1f} s"
            if problem is not None:
                if problem != self.unhealthy:
                    log.warning("not healthy, watchdog not fed: %s", problem)
                    self.notifier.send(f"STATUS=unhealthy: {problem}")
                self.unhealthy = problem
                continue
            if self.unhealthy is not None:
                log.info("healthy again")
                self.unhealthy = None
            self.notifier.send("WATCHDOG=1")

    def stopping(self, why: str) -> None:
        self.notifier.send("STOPPING=1", f"STATUS=stopping: {why}")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        self.notifier.close()
