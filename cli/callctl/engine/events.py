"""Every event a running phone emits, by name: the catalogue behind docs/EVENTS.md.

The engine emits these; ``ui/`` renders them and ``commands/`` runs hooks
on them.  Nobody writes an event name as a string literal elsewhere.
"""

from __future__ import annotations

import enum


class Ev(str, enum.Enum):
    """An event name as it appears in ``{"event": ...}`` records."""

    REGISTERED = "registered"
    SERVER_LOST = "server.lost"
    SERVER_RESTORED = "server.restored"

    CALL_OUTGOING = "call.outgoing"
    CALL_CREATED = "call.created"
    CALL_RINGBACK = "call.ringback"
    CALL_INCOMING = "call.incoming"
    CALL_REFUSED = "call.refused"
    CALL_MISSED = "call.missed"
    CALL_CONNECTING = "call.connecting"
    CALL_CONNECTED = "call.connected"
    CALL_RECONNECTING = "call.reconnecting"
    CALL_RECONNECTED = "call.reconnected"
    CALL_ENDED = "call.ended"

    MEDIA_FLOWING = "media.flowing"
    MEDIA_LEVEL = "media.level"
    MEDIA_STATS = "media.stats"
    MEDIA_MUTED = "media.muted"
    MEDIA_UNMUTED = "media.unmuted"
    MEDIA_VIDEO_PAUSED = "media.video.paused"
    MEDIA_VIDEO_RESUMED = "media.video.resumed"
    MEDIA_VIDEO_ENABLED = "media.video.enabled"
    MEDIA_VIDEO_DISABLED = "media.video.disabled"
    #: ``callctl switch``: the call sends from / plays to another device now.
    MEDIA_SWITCHED = "media.switched"
    MEDIA_HELD = "media.held"
    MEDIA_UNHELD = "media.unheld"
    VIDEO_FLOWING = "video.flowing"

    PEER_MUTED = "peer.muted"
    PEER_UNMUTED = "peer.unmuted"
    PEER_VIDEO_PAUSED = "peer.video.paused"
    PEER_VIDEO_RESUMED = "peer.video.resumed"
    PEER_VIDEO_ENABLED = "peer.video.enabled"
    PEER_VIDEO_DISABLED = "peer.video.disabled"
    PEER_HELD = "peer.held"
    PEER_UNHELD = "peer.unheld"

    #: A DTMF digit the peer sent (RFC 4733 on the audio stream).
    DTMF = "dtmf"
    #: A text or JSON message the peer sent over the call's data channel.
    MESSAGE = "message"

    DEVICE_LOST = "device.lost"
    DEVICE_RESTORED = "device.restored"

    ERROR = "error"
    WARNING = "warning"
    DEMO_SUMMARY = "demo.summary"

    def __str__(self) -> str:
        return self.value


#: Video states as signalled between the parties, with our event and the peer's.
VIDEO_STATES: dict[str, tuple[Ev, Ev]] = {
    "paused": (Ev.MEDIA_VIDEO_PAUSED, Ev.PEER_VIDEO_PAUSED),
    "resumed": (Ev.MEDIA_VIDEO_RESUMED, Ev.PEER_VIDEO_RESUMED),
    "enabled": (Ev.MEDIA_VIDEO_ENABLED, Ev.PEER_VIDEO_ENABLED),
    "disabled": (Ev.MEDIA_VIDEO_DISABLED, Ev.PEER_VIDEO_DISABLED),
}
