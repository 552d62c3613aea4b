"""What a running phone can be told to do: the control socket's commands, as one table.

Each command is a function of the phone and the request that returns the
JSON answer (docs/CONTROL.md).  A command that acts on the call is checked
against the machine first (``can``), so an answer never promises what the
call will refuse.  ``events`` is the control server's own (a stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from callctl.engine import machine as m
from callctl.engine.control import Request
from callctl.engine.phone import Phone
from callctl.engine.session import CallSession
from callctl.media import assembly
from callctl.media.errors import DeviceError, MediaError

Answer = dict[str, Any]


def call_status(s: CallSession) -> dict[str, Any]:
    """The call as ``status`` shows it (docs/CONTROL.md)."""
    c = s.call
    out: dict[str, Any] = {
        "call_id": c.call_id,
        "peer": c.peer,
        "role": c.role.value,
        "state": c.state.value,
        "media": c.media.value,
        "muted": s.muted,
        "peer_muted": c.peer_muted,
    }
    if c.connected_at is not None and c.state in (m.State.CONNECTED, m.State.RECONNECTING):
        out["duration_s"] = round(time.monotonic() - c.connected_at, 1)
    if c.reconnects:
        out["reconnects"] = c.reconnects
    if s.peer is not None:
        peer = s.peer
        out["frames_sent"] = peer.sent.frames
        out["frames_received"] = peer.received.frames
        out["video"] = ("off" if peer.video.source is None
                        else "sending" if peer.video.sending else "paused")
        out["video_frames_sent"] = peer.video_sent.frames
        out["video_frames_received"] = peer.video_received.frames
        if c.peer_video is not None:
            out["peer_video"] = c.peer_video
        out["level_out"] = round(peer.sent.level, 3)
        out["level_in"] = round(peer.received.level, 3)
        out["codec"] = "opus/48000"
        route = peer.route()
        if route and c.state == m.State.CONNECTED:
            out["route"] = route
    if c.reason is not None:
        out["reason"] = c.reason.value
    return out


def _status(phone: Phone, req: Request) -> Answer:
    s = phone.session
    return {"ok": True, "user": phone.user, "device": phone.device, "online": phone.online,
            "call": call_status(s) if s is not None else None,
            # what a soak watches: a number that only grows is a leak
            "tasks": len(asyncio.all_tasks())}


def _feed(s: CallSession, cmd: str, event: m.CallEvent) -> Answer:
    if not s.call.can(type(event)):
        return {"ok": False, "error": f"cannot {cmd} a call that is {s.call.state.value}"}
    s.feed(event)
    return {"ok": True, "call": call_status(s)}


def _accept(s: CallSession, req: Request) -> Answer:
    if req.arg not in (None, "", "video-paused"):
        return {"ok": False, "error": "accept takes no argument but video-paused"}
    if req.arg == "video-paused" and s.call.can(m.Accept):
        s.media_opts.video_paused = True
        if s.peer is not None:
            s.peer.video.sending = False
    return _feed(s, "accept", m.Accept())


def _mute(muted: bool) -> Callable[[CallSession, Request], Answer]:
    def run(s: CallSession, req: Request) -> Answer:
        s.set_muted(muted)
        return {"ok": True, "call": call_status(s)}

    return run


def _video(s: CallSession, req: Request) -> Answer:
    """pause | resume | on | off, mid-call: a track swap, never a renegotiation."""
    what, peer = req.arg or "", s.peer
    if peer is None or not s.in_call:
        return {"ok": False, "error": "video can only change during a call"}
    has_video = peer.video.source is not None
    if what in ("pause", "resume"):
        if not has_video:
            return {"ok": False, "error": "no video in this call: use 'video on'"}
        peer.set_video_sending(what == "resume")
        s.video_changed("paused" if what == "pause" else "resumed")
    elif what == "on":
        if has_video:
            return {"ok": False, "error": "video is already on"}
        try:
            source = assembly.open_video_source(s.media_opts)
        except (MediaError, DeviceError) as exc:
            return {"ok": False, "error": str(exc)}
        peer.video.sending = True
        peer.set_video_source(source)
        s.video_changed("enabled")
    elif what == "off":
        if not has_video:
            return {"ok": False, "error": "video is already off"}
        peer.set_video_source(None)
        s.video_changed("disabled")
    else:
        return {"ok": False, "error": "video takes pause, resume, on or off"}
    return {"ok": True, "call": call_status(s)}


#: Commands about the current call: they need one, and ``call_id`` (when given) must name it.
CALL_COMMANDS: dict[str, Callable[[CallSession, Request], Answer]] = {
    "accept": _accept,
    "decline": lambda s, req: _feed(s, "decline", m.Decline()),
    "hangup": lambda s, req: _feed(s, "hangup", m.Hangup()),
    "mute": _mute(True),
    "unmute": _mute(False),
    "video": _video,
}


def run_command(phone: Phone, req: Request) -> Answer:
    """The answer to one control request."""
    if req.cmd == "status":
        return _status(phone, req)
    handler = CALL_COMMANDS.get(req.cmd)
    if handler is None:
        return {"ok": False, "error": f"unknown command {req.cmd!r}"}
    s = phone.session
    if s is None or s.call.state == m.State.ENDED:
        return {"ok": False, "error": "no call in progress"}
    if req.call_id is not None and s.call.call_id != req.call_id:
        return {"ok": False, "error": f"no call {req.call_id} here (the current call is {s.call.call_id})"}
    return handler(s, req)


#: Every command the control socket accepts (``events`` is served by the socket itself).
COMMANDS = frozenset({"status", "events", *CALL_COMMANDS})
