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
    Ev.CALL_MISSED: lambda r: f"missed a call from {r['peer']} ({r['reason']})",
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
    Ev.MEDIA_HELD: lambda r: "call on hold",
    Ev.MEDIA_UNHELD: lambda r: "call taken off hold",
    Ev.PEER_HELD: lambda r: "the peer put the call on hold",
    Ev.PEER_UNHELD: lambda r: "the peer took the call off hold",
    Ev.DTMF: lambda r: f"DTMF {r['digit']}",
    Ev.MESSAGE: lambda r: f"message: {_short(r.get('body'))}",
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
    """One line per state change; a server that stays unreachable is said once, not per retry.

    ``quiet_until_online``: nothing about the server before the first ``registered``
    (``call`` says in one line that it could not reach it).
    """

    def __init__(self, *, quiet_until_online: bool = False) -> None:
        self.quiet = quiet_until_online
        self._lost_said = False

    def __call__(self, event: str, record: dict[str, Any]) -> None:
        if event in (Ev.REGISTERED, Ev.SERVER_RESTORED):
            self.quiet, self._lost_said = False, False
        elif event == Ev.SERVER_LOST:
            if self.quiet or self._lost_said:
                return
            self._lost_said = True
        elif event == Ev.CALL_ENDED and record.get("call_id") is None and self.quiet:
            return  # a call that never reached the server: the reason is said in one line
        render = PLAIN_EVENTS.get(event)
        if render is not None:
            print(f"callctl: {render(record)}", file=sys.stderr, flush=True)


def _hold_words(call: dict[str, Any]) -> str:
    if call.get("held"):
        return "  ON HOLD (h takes it off)"
    return "  held by the peer" if call.get("peer_held") else ""


def _short(body: Any, limit: int = 60) -> str:
    """A message's body on one line of a terminal: no control characters, cut at ``limit``."""
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _meter(value: float, width: int = 20) -> str:
    filled = min(width, int(round(value * width * 2)))  # speech peaks rarely pass 0.5
    return "█" * filled + "·" * (width - filled)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


#: What each state of a call lets a person do with one key.
STATE_KEYS = {
    "incoming": "a answer · d decline",
    "outgoing": "q cancel",
    "connecting": "q hang up",
    "connected": "m mute · h hold · q hang up",
    "reconnecting": "m mute · q hang up",
}
STATE_WORDS = {
    "outgoing": "calling",
    "incoming": "ringing: incoming call",
    "connecting": "connecting",
    "connected": "in call",
    "reconnecting": "reconnecting (media path lost)",
}


def ended_text(record: dict[str, Any], me: str | None = None) -> str:
    """``hangup (by you) after 00:12`` from a ``call.ended`` record."""
    reason, source = record.get("reason", "?"), record.get("source")
    by = {"local": "by you", "remote": f"by {record.get('peer') or 'the peer'}",
          "server": "by the server"}.get(str(source), "")
    return f"{reason}{f' ({by})' if by else ''} after {_clock(float(record.get('duration_s') or 0))}"


def stats_line(stats: dict[str, Any]) -> str:
    """``media.stats`` in one line: rtt, loss each way, jitter, bitrate each way, MOS."""
    parts = []
    if "rtt_ms" in stats:
        parts.append(f"rtt {stats['rtt_ms']:.0f} ms")
    if "loss_in_pct" in stats:
        out = f" / {stats['loss_out_pct']:.1f} out" if "loss_out_pct" in stats else ""
        parts.append(f"loss {stats['loss_in_pct']:.1f} in{out} %")
    if "jitter_ms" in stats:
        parts.append(f"jitter {stats['jitter_ms']:.0f} ms")
    if "kbps_out" in stats:
        into = f" / {stats['kbps_in']:.0f} in" if "kbps_in" in stats else ""
        parts.append(f"{stats['kbps_out']:.0f} out{into} kbps")
    if "mos" in stats:
        parts.append(f"MOS {stats['mos']:.1f}")
    return "  ".join(parts)


class LiveView:
    """A rich Live panel refreshed a few times a second, with single-key commands.

    While the peer's video is drawn in the terminal (``--video-out terminal``) the
    panel gives way to one status line on the bottom row, below the frames; when
    the video stops the panel comes back.  When the view stops, the last frame
    stays on screen: the call that ended (``call``) or the waiting phone.
    """

    KEYS = {"a": "accept", "d": "decline", "m": "toggle-mute", "h": "toggle-hold", "q": "hangup"}
    WIDTH = 76

    def __init__(self, status: Callable[[], dict[str, Any]], command: Callable[[str], None],
                 peer_stats: Callable[[], Any] | None = None, *, one_call: bool = False) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.status = status
        self.command = command
        self.peer_stats = peer_stats
        self.one_call = one_call
        self.lines: list[str] = []
        self.stats: dict[str, float] = {}
        self.ended: dict[str, Any] | None = None
        self._live: Any = None
        self._task: asyncio.Task[None] | None = None
        self._tty_state: Any = None
        self._video_mode = False

    def __call__(self, event: str, record: dict[str, Any]) -> None:
        if event == Ev.CALL_ENDED:
            self.ended = record
        elif event in (Ev.CALL_OUTGOING, Ev.CALL_INCOMING):
            self.ended = None
        render = PLAIN_EVENTS.get(event)
        if render is not None:
            self.lines = [*self.lines[-4:], f"{time.strftime('%H:%M:%S')} {render(record)}"]

    def _panel(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        st = self.status()
        call = st.get("call") or {}
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", min_width=6, no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis")
        table.add_row("you", f"{st.get('user', '?')} ({'online' if st.get('online') else 'offline'})")
        keys = "Ctrl-C quit"
        if call:
            table.add_row("peer", str(call.get("peer") or "?"))
            state = call.get("state", "")
            words = STATE_WORDS.get(state, state)
            if state == "incoming":
                words += f" ({call.get('media', 'audio')})"
            if call.get("duration_s") is not None:
                words += f"  {_clock(call['duration_s'])}"
            words += _hold_words(call)
            table.add_row("call", words)
            table.add_row("mic", _meter(call.get("level_out", 0.0)) + ("  MUTED" if call.get("muted") else ""))
            table.add_row("remote", _meter(call.get("level_in", 0.0)) + ("  muted" if call.get("peer_muted") else ""))
            if call.get("route"):
                route = call["route"]
                table.add_row("path", f"{route['via']} ({route['local']} → {route['remote']})")
            if call.get("codec"):
                table.add_row("codec", call["codec"])
            # the link's figures once media has come: not while ringing, not the last call's
            if self.stats and state in ("connected", "reconnecting") and self.stats.get("packets_received"):
                table.add_row("link", stats_line(self.stats))
            keys = STATE_KEYS.get(state, keys)
        elif self.ended is not None and self.one_call:
            table.add_row("peer", str(self.ended.get("peer") or "?"))
            table.add_row("call", f"ended: {ended_text(self.ended)}")
            keys = ""
        else:
            table.add_row("call", "waiting for calls")
            if self.ended is not None:
                table.add_row("last", f"{self.ended.get('peer') or '?'}: {ended_text(self.ended)}")
        for line in self.lines:
            table.add_row("", f"[dim]{line}[/dim]")
        width = max(40, min(self.console.width, self.WIDTH))
        return Panel(table, title="callctl", subtitle=keys or None, width=width)

    def _status_line(self) -> str:
        """The one line under the peer's video: who, state, timer, levels, keys."""
        st = self.status()
        call = st.get("call") or {}
        if not call:
            return "callctl: " + ("waiting for calls" if not self.ended else ended_text(self.ended))
        parts = [str(call.get("peer") or "?"), STATE_WORDS.get(call.get("state", ""), "")]
        if call.get("duration_s") is not None:
            parts.append(_clock(call["duration_s"]) + _hold_words(call))
        parts.append("mic " + _meter(call.get("level_out", 0.0), 5) + (" MUTED" if call.get("muted") else "")
                     + " remote " + _meter(call.get("level_in", 0.0), 5))
        parts.append(STATE_KEYS.get(call.get("state", ""), ""))
        return " · ".join(p for p in parts if p)

    def _draw_status_line(self) -> None:
        import shutil

        cols, rows = shutil.get_terminal_size((80, 24))
        line = self._status_line()[: cols - 1]
        sys.stdout.write(f"\x1b7\x1b[{rows};1H\x1b[2K\x1b[7m{line}\x1b[0m\x1b8")
        sys.stdout.flush()

    def _start_live(self) -> None:
        from rich.live import Live

        self._live = Live(self._panel(), console=self.console, auto_refresh=False, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start(refresh=True)

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _tick(self) -> None:
        from callctl.ui.terminal_video import video_on_screen

        video = video_on_screen()
        if video and not self._video_mode:
            self._stop_live()
            sys.stdout.write("\x1b[2J\x1b[?25l")  # the frames take the screen; no cursor over them
            self._video_mode = True
        elif not video and self._video_mode:
            sys.stdout.write("\x1b[2J\x1b[H\x1b[?25h")  # a clean screen for the panel
            sys.stdout.flush()
            self._video_mode = False
            self._start_live()
        if self._video_mode:
            self._draw_status_line()
        elif self._live is not None:
            self._live.update(self._panel(), refresh=True)

    async def run(self) -> None:
        self._raw_keys()
        self._start_live()
        tick = 0
        try:
            while True:
                await asyncio.sleep(0.125)
                tick += 1
                if self.peer_stats is not None and tick % 16 == 0:
                    call = self.status().get("call") or {}
                    if call.get("state") in ("connected", "reconnecting"):
                        with contextlib.suppress(Exception):
                            self.stats = await self.peer_stats() or {}
                    else:
                        self.stats = {}
                self._tick()
        finally:
            if self._video_mode:  # the last frame is the panel, not a frozen video
                sys.stdout.write("\x1b[2J\x1b[H\x1b[?25h")
                sys.stdout.flush()
                self._video_mode = False
                self._start_live()
            if self._live is not None:
                self._live.update(self._panel(), refresh=True)
            self._stop_live()
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
