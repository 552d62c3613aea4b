"""``--on-ring/--on-connect/--on-end/--on-missed``: a shell command run on a call's events, in the background.

The call is in the hook's environment (docs/EVENTS.md, Hooks): the event, call
id, peer, media, end reason and duration, and who we are (user, device).  A
hook never holds the call up; a failing one is one line on stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from callctl.engine.events import Ev

HOOK_EVENTS: dict[str, str] = {Ev.CALL_INCOMING: "ring", Ev.CALL_RINGBACK: "ringback",
                               Ev.CALL_CONNECTED: "connect", Ev.CALL_ENDED: "end",
                               Ev.CALL_MISSED: "missed"}
#: At exit, a hook still running gets this long to finish.
FINISH_S = 5.0


class Hooks:
    """The hooks of one ``call`` or ``listen``: an event listener plus the hooks it started."""

    def __init__(self, commands: dict[str, str | None], *, user: str, device: str) -> None:
        self.commands = {k: v for k, v in commands.items() if v}
        self.user, self.device = user, device
        self._running: set[asyncio.Task[None]] = set()

    def __call__(self, event: str, record: dict[str, Any]) -> None:
        cmd = self.commands.get(HOOK_EVENTS.get(event, ""))
        if cmd:
            task = asyncio.ensure_future(self._run(cmd, record))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def environment(self, record: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        duration = record.get("duration_s")
        env.update({
            "CALLCTL_EVENT": str(record.get("event", "")),
            "CALLCTL_CALL_ID": str(record.get("call_id") or ""),
            "CALLCTL_PEER": str(record.get("peer") or ""),
            "CALLCTL_MEDIA": str(record.get("media") or ""),
            "CALLCTL_REASON": str(record.get("reason") or ""),
            "CALLCTL_DURATION_S": "" if duration is None else f"{float(duration):.1f}",
            "CALLCTL_USER": self.user,
            "CALLCTL_DEVICE": self.device,
        })
        return env

    async def _run(self, cmd: str, record: dict[str, Any]) -> None:
        try:
            proc = await asyncio.create_subprocess_shell(cmd, env=self.environment(record),
                                                         stdin=asyncio.subprocess.DEVNULL)
            code = await proc.wait()
        except OSError as exc:
            print(f"callctl: hook {cmd!r} failed: {exc}", file=sys.stderr)
            return
        if code != 0:
            print(f"callctl: hook {cmd!r} exited {code}", file=sys.stderr)

    async def finish(self) -> None:
        for task in list(self._running):
            await asyncio.wait([task], timeout=FINISH_S)
