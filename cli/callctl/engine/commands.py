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
from callctl.engine.control import Follow, Later, Request
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
        "held": s.held,
        "peer_held": c.peer_held,
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
        out["mic_processing"] = peer.processing.names()
        if (video_codec := peer.video_codec_name()) is not None:
            out["video_codec"] = video_codec
        if peer.call_stats.latest:
            out["stats"] = peer.call_stats.latest
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


def _hold(held: bool) -> Callable[[CallSession, Request], Answer]:
    def run(s: CallSession, req: Request) -> Answer:
        if not s.in_call:
            return {"ok": False, "error": f"cannot {'hold' if held else 'unhold'} a call that is "
                                          f"{s.call.state.value}"}
        s.set_held(held)
        return {"ok": True, "call": call_status(s)}

    return run


#: ``dtmf`` takes a tone this long (ms) and this gap after it, by default (W3C insertDTMF's).
DTMF_DURATION_MS, DTMF_GAP_MS = 100, 70


def _int_opt(opts: dict[str, Any], key: str, default: int, low: int, high: int) -> int | str:
    value = opts.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return f"{key.replace('_', '-')} takes a whole number of milliseconds from {low} to {high}"
    return value


def _dtmf(s: CallSession, req: Request) -> Answer | Later:
    """Send DTMF digits on the call's audio (RFC 4733); the answer comes once they are sent."""
    from callctl.media.dtmf import check_tones, playing_time_s

    if s.peer is None or s.call.state != m.State.CONNECTED:
        return {"ok": False, "error": f"DTMF needs a connected call (this one is {s.call.state.value})"}
    opts = req.opts or {}
    duration = _int_opt(opts, "duration_ms", DTMF_DURATION_MS, 40, 6000)
    gap = _int_opt(opts, "gap_ms", DTMF_GAP_MS, 30, 6000)
    if isinstance(duration, str) or isinstance(gap, str):
        return {"ok": False, "error": duration if isinstance(duration, str) else gap, "usage": True}
    try:
        tones = check_tones(req.arg or "")
    except ValueError as exc:
        return {"ok": False, "error": str(exc), "usage": True}
    peer = s.peer

    async def send() -> Answer:
        try:
            await peer.send_dtmf(tones, duration, gap)
        except MediaError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "sent": tones, "call": call_status(s)}

    return Later(send(), timeout=playing_time_s(tones, duration, gap) + 10)


#: How long ``send`` waits for the peer's acknowledgement.
SEND_TIMEOUT_S = 10.0


def _send_message(s: CallSession, req: Request) -> Answer | Later:
    """Send a text or JSON message over the call's data channel; the answer is the peer's ack."""
    import json

    from callctl.media.messages import MessageError

    kind = (req.opts or {}).get("type", "text")
    if kind not in ("text", "json"):
        return {"ok": False, "error": f"a message is text or json, not {kind!r}", "usage": True}
    if not s.in_call:
        return {"ok": False, "error": f"messages need a call in progress (this one is {s.call.state.value})"}
    body: Any = req.arg or ""
    if kind == "json":
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"not JSON: {exc}", "usage": True}
    messenger = s.messenger

    async def send() -> Answer:
        try:
            await messenger.send(kind, body, timeout=SEND_TIMEOUT_S)
        except MessageError as exc:
            return {"ok": False, "error": str(exc), "usage": bool(getattr(exc, "usage", False))}
        return {"ok": True, "delivered": True, "call": call_status(s)}

    return Later(send(), timeout=SEND_TIMEOUT_S + 5)


#: ``snapshot`` early in a call (an ``--on-connect`` hook's) waits this long for the peer's first frame.
SNAPSHOT_WAIT_S = 5.0


def _snapshot(s: CallSession, req: Request) -> Answer | Later:
    """The peer's newest video frame as a JPEG file (``arg``: its absolute path)."""
    from callctl.media.snapshot import save_jpeg

    peer = s.peer
    if peer is None or not s.in_call:
        return {"ok": False, "error": f"a snapshot needs a call in progress (this one is {s.call.state.value})"}
    path = Path(req.arg or "")
    if not path.is_absolute() or path.suffix.lower() not in (".jpg", ".jpeg"):
        return {"ok": False, "error": f"a snapshot goes to a .jpg file by absolute path, not {req.arg!r}",
                "usage": True}

    async def take() -> Answer:
        try:
            await asyncio.wait_for(peer.video_arrived.wait(), SNAPSHOT_WAIT_S)
        except TimeoutError:
            return {"ok": False, "error": f"no video from the peer in this call (waited {SNAPSHOT_WAIT_S:g} s)"}
        frame = peer.last_video_frame
        try:
            width, height = await asyncio.get_running_loop().run_in_executor(None, save_jpeg, frame, path)
        except MediaError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "path": str(path), "width": width, "height": height}

    return Later(take(), timeout=SNAPSHOT_WAIT_S + 10)


#: ``switch``'s options: what each one opens (``--mic NAME`` is the source ``mic:NAME`` …).
SWITCHES = {"mic": ("audio_in", "mic:"), "speaker": ("audio_out", "speaker:"), "camera": ("video_in", "camera:"),
            "audio_in": ("audio_in", ""), "audio_out": ("audio_out", ""), "video_in": ("video_in", "")}


def _switch(s: CallSession, req: Request) -> Answer | Later:
    """Another mic, speaker, camera or source mid-call (``opts``: one or more of SWITCHES)."""
    opts = {k: v for k, v in (req.opts or {}).items() if v is not None}
    if not opts or set(opts) - set(SWITCHES) or not all(isinstance(v, str) and v for v in opts.values()):
        return {"ok": False, "usage": True,
                "error": "switch takes --mic NAME, --speaker NAME, --camera DEV, --audio-in SRC, --audio-out SINK "
                         "or --video-in SRC"}
    targets = [(SWITCHES[k][0], SWITCHES[k][1] + v) for k, v in opts.items()]
    if len({kind for kind, _ in targets}) != len(targets):
        return {"ok": False, "error": "one device per direction: --mic and --audio-in are both the source",
                "usage": True}
    if not s.in_call:
        return {"ok": False, "error": f"switch needs a call in progress (this one is {s.call.state.value})"}
    registries: dict[str, Any] = {"audio_in": assembly.AUDIO_SOURCES, "audio_out": assembly.AUDIO_SINKS,
                                  "video_in": assembly.VIDEO_SOURCES}
    for kind, spec in targets:
        try:
            registries[kind].check(spec, s.media_opts.params)
        except (MediaError, DeviceError) as exc:
            return {"ok": False, "error": str(exc), "usage": isinstance(exc, MediaError),
                    "device": isinstance(exc, DeviceError)}

    async def switch() -> Answer:
        switched = {}
        for kind, spec in targets:
            try:
                switched[kind] = await s.switch(kind, spec)
            except (MediaError, DeviceError) as exc:
                return {"ok": False, "error": str(exc), "switched": switched, "device": isinstance(exc, DeviceError)}
        return {"ok": True, "switched": switched, "call": call_status(s)}

    return Later(switch(), timeout=20)


def _video(s: CallSession, req: Request) -> Answer:
    """pause | resume | on | off, mid-call: a track swap, never a renegotiation."""
    what, peer = req.arg or "", s.peer
    if peer is None or not s.in_call:
        return {"ok": False, "error": "video can only change during a call"}
    if s.on_hold:
        return {"ok": False, "error": "the call is on hold: its video comes back with it (unhold)"}
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
    "bitrate": int, "record": str, "ringback": str, "hold_audio": str,
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
    for key in ("audio_in", "audio_out", "loop", "ringback", "hold_audio", "video_paused"):
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
CALL_COMMANDS: dict[str, Callable[[CallSession, Request], Answer | Later]] = {
    "accept": _accept,
    "decline": lambda s, req: _feed(s, "decline", m.Decline()),
    "hangup": lambda s, req: _feed(s, "hangup", m.Hangup()),
    "mute": _mute(True),
    "unmute": _mute(False),
    "hold": _hold(True),
    "unhold": _hold(False),
    "video": _video,
    "dtmf": _dtmf,
    "send": _send_message,
    "snapshot": _snapshot,
    "switch": _switch,
}


def run_command(phone: Phone, req: Request) -> Answer | Follow | Later:
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
