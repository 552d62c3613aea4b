"""How a running call shows itself: NDJSON on stdout, plain lines on stderr, or a live view.

- ``--json``: every event as one JSON line on stdout, flushed (docs/EVENTS.md).
- stdout not a terminal: one plain line per state change on stderr.
- a terminal: a rich live view (peer, state, timer, levels, stats, key hints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from callctl.engine.events import Ev

PLAIN_EVENTS: dict[str, Callable[[dict[str, Any]], str]] = {
    Ev.REGISTERED: lambda r: f"online as {r['user']} ({r['server']})",
    Ev.SERVER_LOST: lambda r: f"server unreachable: {r['message']} (retrying)",
    Ev.SERVER_RESTORED: lambda r: "server reachable again",
    Ev.CALL_OUTGOING: lambda r: f"calling {r['peer']}",
    Ev.CALL_RINGBACK: lambda r: f"ringing {r['peer']}",
    Ev.CALL_INCOMING: lambda r: f"incoming {r['media']} call from {r['peer']} ({r['call_id']})",
    Ev.CALL_REFUSED: lambda r: f"refused a call from {r['peer']} (not in --allow)",
    Ev.CALL_MISSED: lambda r: f"missed a call from {r['peer']} (busy)",
    Ev.CALL_CONNECTING: lambda r: "connecting",
    Ev.CALL_CONNECTED: lambda r: f"connected to {r['peer']} (set-up {r['setup_ms']:.0f} ms"
    + (f", via {r['route']['via']}" if r.get("route") else "") + ")",
    Ev.CALL_RECONNECTING: lambda r: "media path lost: reconnecting",
    Ev.CALL_RECONNECTED: lambda r: f"reconnected (media was down {r['down_ms'] / 1000:.1f} s)",
    Ev.CALL_ENDED: lambda r: f"call ended: {r['reason']} ({r['source']}) after {r['duration_s']:.1f} s",
    Ev.MEDIA_MUTED: lambda r: "microphone muted",
    Ev.MEDIA_UNMUTED: lambda r: "microphone unmuted",
    Ev.PEER_MUTED: lambda r: "peer muted",
    Ev.PEER_UNMUTED: lambda r: "peer unmuted",
    Ev.DEVICE_LOST: lambda r: f"{r['kind']} {r['device']!r} stopped (unplugged?): silent until it is back",
    Ev.DEVICE_RESTORED: lambda r: f"{r['kind']} {r['device']!r} is back",
    Ev.ERROR: lambda r: f"error: {r['message']}",
    Ev.WARNING: lambda r: f"warning: {r['message']}",
}


class JsonOutput:
    def __call__(self, event: str, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        sys.stdout.flush()
        if event == Ev.WARNING:  # a degraded call is said on stderr too, whatever reads stdout
            print(f"callctl: {PLAIN_EVENTS[Ev.WARNING](record)}", file=sys.stderr, flush=True)


class PlainOutput:
    def __call__(self, event: str, record: dict[str, Any]) -> None:
        render = PLAIN_EVENTS.get(event)
        if render is not None:
            print(f"callctl: {render(record)}", file=sys.stderr, flush=True)


def _meter(value: float, width: int = 20) -> str:
    filled = min(width, int(round(value * width * 2)))  # speech peaks rarely pass 0.5
    return "█" * filled + "·" * (width - filled)


class LiveView:
    """A rich Live panel refreshed a few times a second, with single-key commands."""

    KEYS = {"a": "accept", "d": "decline", "m": "toggle-mute", "q": "hangup"}

    def __init__(self, status: Callable[[], dict[str, Any]], command: Callable[[str], None],
                 peer_stats: Callable[[], Any] | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.status = status
        self.command = command
        self.peer_stats = peer_stats
        self.lines: list[str] = []
        self.stats: dict[str, float] = {}
        self._live: Any = None
        self._task: asyncio.Task[None] | None = None
        self._tty_state: Any = None

    def __call__(self, event: str, record: dict[str, Any]) -> None:
        render = PLAIN_EVENTS.get(event)
        if render is not None:
            self.lines = [*self.lines[-4:], f"{time.strftime('%H:%M:%S')} {render(record)}"]

    def _panel(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        st = self.status()
        call = st.get("call") or {}
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("you", f"{st.get('user', '?')} ({'online' if st.get('online') else 'offline'})")
        if call:
            table.add_row("peer", str(call.get("peer") or "?"))
            state = call.get("state", "")
            if call.get("duration_s") is not None:
                state += f"  {int(call['duration_s']) // 60:02d}:{int(call['duration_s']) % 60:02d}"
            table.add_row("call", state)
            table.add_row("mic", _meter(call.get("level_out", 0.0)) + ("  MUTED" if call.get("muted") else ""))
            table.add_row("remote", _meter(call.get("level_in", 0.0)) + ("  muted" if call.get("peer_muted") else ""))
            if call.get("route"):
                route = call["route"]
                table.add_row("path", f"{route['via']} ({route['local']} → {route['remote']})")
            if call.get("codec"):
                table.add_row("codec", call["codec"])
            if self.stats:
                table.add_row("link", "  ".join(f"{k} {v}" for k, v in self.stats.items()))
        else:
            table.add_row("call", "waiting for calls")
        for line in self.lines:
            table.add_row("", f"[dim]{line}[/dim]")
        keys = "a accept · d decline · m mute · q hang up"
        return Panel(table, title="callctl", subtitle=keys, expand=False)

    async def run(self) -> None:
        from rich.live import Live

        self._raw_keys()
        with Live(self._panel(), console=self.console, refresh_per_second=8, transient=False) as live:
            self._live = live
            tick = 0
            try:
                while True:
                    await asyncio.sleep(0.125)
                    tick += 1
                    if self.peer_stats is not None and tick % 16 == 0:
                        with contextlib.suppress(Exception):
                            self.stats = await self.peer_stats() or {}
                    live.update(self._panel())
            finally:
                live.update(self._panel())
                self._restore_keys()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _raw_keys(self) -> None:
        if not sys.stdin.isatty():
            return
        import termios
        import tty

        fd = sys.stdin.fileno()
        self._tty_state = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        asyncio.get_running_loop().add_reader(fd, self._key)

    def _key(self) -> None:
        with contextlib.suppress(OSError):
            ch = os.read(sys.stdin.fileno(), 1).decode(errors="ignore").lower()
            if ch in self.KEYS:
                self.command(self.KEYS[ch])

    def _restore_keys(self) -> None:
        if self._tty_state is None:
            return
        import termios

        fd = sys.stdin.fileno()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, self._tty_state)
        self._tty_state = None
