"""Is a peer's session description usable?  Checked before anything is built from it.

A hostile or broken peer's SDP ("hello world", ``v=0`` alone, no media,
binary, thousands of ``m=`` lines, media without ICE or DTLS attributes, an
``m=application`` section other than a WebRTC data channel) raises
``BadSdp`` here with a reason a person can read, so the call ends at once
with ``bad_sdp`` instead of ringing, "connecting" and timing out.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from callctl.media.errors import BadSdp

#: Media sections we accept in one description (ours has three: audio, video, data channel).
MAX_MEDIA = 8
#: What our peer connection can send and receive on the audio stream.
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma"})
#: The transport profiles of a WebRTC data channel section (RFC 8841; DTLS/SCTP: the old form).
SCTP_PROFILES = frozenset({"UDP/DTLS/SCTP", "TCP/DTLS/SCTP"})


def check_sdp(sdp: str, what: str = "offer") -> None:
    """Raise BadSdp unless ``sdp`` is a description aiortc can negotiate a call from."""
    from aiortc.sdp import SessionDescription

    if not sdp.startswith("v=0"):
        raise BadSdp(f"the {what} is not a session description")
    if sdp.count("\nm=") > MAX_MEDIA:
        raise BadSdp(f"the {what} has more than {MAX_MEDIA} media sections")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser asserts and raises on malformed lines
        raise BadSdp(f"the {what} cannot be parsed ({type(exc).__name__})") from None
    active = [m for m in desc.media if m.port != 0]
    if not any(m.kind == "audio" for m in active):
        raise BadSdp(f"the {what} has no audio")
    if sum(m.kind == "application" for m in active) > 1:
        raise BadSdp(f"the {what} has more than one data channel section")
    for media in active:
        name = "data channel" if media.kind == "application" else media.kind
        if media.kind == "application":
            _check_data_channel(media, what)
        elif media.kind not in ("audio", "video"):
            raise BadSdp(f"the {what} has a {media.kind!r} section, which callctl does not speak")
        if media.ice is None or not (media.ice.usernameFragment and media.ice.password):
            raise BadSdp(f"the {what}'s {name} has no ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise BadSdp(f"the {what}'s {name} has no DTLS fingerprint")
        for candidate in media.ice_candidates:
            if not 0 < candidate.port < 65536:
                raise BadSdp(f"the {what} has a candidate with port {candidate.port}")
        if media.kind == "audio" and not any(
            c.mimeType.split("/")[-1].lower() in AUDIO_CODECS for c in media.rtp.codecs
        ):
            raise BadSdp(f"the {what} offers no audio codec callctl speaks (Opus, PCMU, PCMA)")


def _check_data_channel(media: Any, what: str) -> None:
    """An ``m=application`` section: only a WebRTC data channel (SCTP over DTLS), with its port."""
    if media.profile in SCTP_PROFILES and media.fmt == ["webrtc-datachannel"]:
        port = media.sctp_port
    elif (media.profile == "DTLS/SCTP" and len(media.fmt) == 1
            and re.fullmatch("[0-9]{1,5}", media.fmt[0])
            and media.sctpmap.get(int(media.fmt[0]), "").startswith("webrtc-datachannel")):
        port = int(media.fmt[0])
    else:
        raise BadSdp(f"the {what} has an application section that is not a WebRTC data channel")
    if port is None or not 0 < port < 65536:
        raise BadSdp(f"the {what}'s data channel has no usable SCTP port")


def has_data_channel(sdp: str) -> bool:
    """The description (one ``check_sdp`` passed) negotiates a data channel."""
    from aiortc.sdp import SessionDescription

    try:
        desc = SessionDescription.parse(sdp)
    except Exception:
        return False
    return any(m.kind == "application" and m.port != 0 for m in desc.media)


async def check_negotiable(sdp: str, what: str = "offer") -> None:
    """``check_sdp``, then what only aiortc can tell: it takes the offer and can answer it.

    Uses a throwaway peer connection with no tracks and no devices, so a call
    in progress keeps its own while a re-offer is judged.
    """
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    check_sdp(sdp, what)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        with refusals(what):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.createAnswer()
    finally:
        await pc.close()


@contextlib.contextmanager
def refusals(what: str) -> Iterator[None]:
    """What aiortc raises for a description it cannot negotiate, as BadSdp."""
    from aiortc import exceptions as rtc

    try:
        yield
    except (ValueError, AssertionError, KeyError, IndexError, TypeError, rtc.InternalError,
            rtc.InvalidAccessError, rtc.InvalidStateError, rtc.OperationError) as exc:
        raise BadSdp(f"the {what} cannot be negotiated: {exc or type(exc).__name__}") from None
