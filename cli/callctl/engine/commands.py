"""What a running phone can be told to do: the control socket's commands, as one table.

Each command is a function of the phone and the request that returns the
JSON answer (docs/CONTROL.md).  A command that acts on the call is checked
against the machine first (``can``), so an answer never promises what the
call will refuse.  ``events`` is the control server's own (a stream).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from callctl.engine import machine as m
from callctl.engine.control import Follow, Request
from callctl.engine.events import Ev
from callctl.engine.phone import Phone
from callctl.engine.session import CallLimits, CallSession
from callctl.media import assembly
from callctl.media.errors import DeviceError, MediaError
from callctl.signaling import protocol as p

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
            **phone.counts.as_status(phone.online),
            "server_error": None if phone.online else phone.offline_reason,
            "health": phone.health() or "ok",
            # what a soak watches: a number that only grows is a leak
            "tasks": len(asyncio.all_tasks())}


def status_of(phone: Phone) -> Answer:
    """What ``status`` answers (the live view shows it)."""
    return _status(phone, Request("status"))


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


#: What ``callctl call`` may set for one call placed through a running ``listen``, and its type.
DIAL_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "video": bool, "video_paused": bool, "loop": bool,
    "ring_timeout": (int, float), "hangup_after": (int, float), "max_duration": (int, float),
    "bitrate": int, "record": str, "ringback": str,
    "audio_in": str, "audio_out": str, "video_in": str,
}


def _dial_media(phone: Phone, opts: dict[str, Any]) -> tuple[p.Media, CallLimits, assembly.MediaOptions] | str:
    """The call's media, limits and media options (the listener's, with the caller's changes)."""
    for key, value in opts.items():
        kind = DIAL_OPTIONS.get(key)
        if kind is None:
            return f"a call through the running listen cannot set {key.replace('_', '-')!r} (use --standalone)"
        if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            return f"bad value for {key.replace('_', '-')}: {value!r}"
    media = dataclasses.replace(phone.media)
    for key in ("audio_in", "audio_out", "loop", "ringback", "video_paused"):
        if opts.get(key) is not None:
            setattr(media, key, opts[key])
    if opts.get("bitrate") is not None:
        media.bitrate_kbps = opts["bitrate"]
    if opts.get("record") is not None:
        media.record = Path(opts["record"])
    video = bool(opts.get("video")) or opts.get("video_in") is not None
    if video:
        media.video_in = opts.get("video_in") or media.video_in or "camera"
    try:
        assembly.check(media)
    except (MediaError, DeviceError) as exc:
        return str(exc)
    limits = CallLimits(ring_timeout=opts.get("ring_timeout"), hangup_after=opts.get("hangup_after"),
                        max_duration=opts.get("max_duration"))
    return (p.Media.VIDEO if video else p.Media.AUDIO), limits, media


def _dial(phone: Phone, req: Request) -> Answer | Follow:
    """Place a call from this phone for another process (``callctl call`` beside a ``listen``)."""
    if not phone.takes_dials:
        return {"ok": False, "error": "this process is a call, not a listen", "standalone": True}
    peer = req.arg or ""
    if not p.valid_id(peer):
        return {"ok": False, "error": f"bad user id {peer!r}: letters, digits and . _ @ + - (max 64)", "usage": True}
    if peer == phone.user:
        return {"ok": False, "error": f"{peer} cannot call itself", "usage": True}
    current = phone.session
    if current is not None and current.call.state != m.State.ENDED:
        return {"ok": False, "error": f"this device is in a call with {current.call.peer} "
                                      f"({current.call.state.value}): hang it up first", "busy": True}
    if not phone.online:
        return {"ok": False, "error": f"the running listen is not connected to its server "
                                      f"({phone.offline_reason or 'connecting'})", "offline": True}
    setup = _dial_media(phone, req.opts or {})
    if isinstance(setup, str):
        return {"ok": False, "error": setup, "usage": True}
    media_kind, limits, media = setup
    session = phone.dial(peer, media_kind, limits, media_opts=media)

    def mine(record: dict[str, Any]) -> bool:
        call_id = record.get("call_id")
        return call_id is None or call_id == session.call.call_id

    def last(record: dict[str, Any]) -> bool:
        return record.get("event") == Ev.CALL_ENDED and mine(record)

    def hang_up() -> None:
        if session.call.state != m.State.ENDED:
            session.feed(m.Hangup())

    return Follow({"ok": True, "call": call_status(session)}, mine, last, hang_up)


#: Commands about the current call: they need one, and ``call_id`` (when given) must name it.
CALL_COMMANDS: dict[str, Callable[[CallSession, Request], Answer]] = {
    "accept": _accept,
    "decline": lambda s, req: _feed(s, "decline", m.Decline()),
    "hangup": lambda s, req: _feed(s, "hangup", m.Hangup()),
    "mute": _mute(True),
    "unmute": _mute(False),
    "video": _video,
}


def run_command(phone: Phone, req: Request) -> Answer | Follow:
    """The answer to one control request."""
    if req.cmd == "status":
        return _status(phone, req)
    if req.cmd == "dial":
        return _dial(phone, req)
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
COMMANDS = frozenset({"status", "events", "dial", *CALL_COMMANDS})
