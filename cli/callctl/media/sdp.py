"""Is a peer's session description usable?  Checked before anything is built from it.

A hostile or broken peer's SDP ("hello world", ``v=0`` alone, no media,
binary, thousands of ``m=`` lines, media without ICE or DTLS attributes)
raises ``BadSdp`` here with a reason a person can read, so the call ends at
once with ``bad_sdp`` instead of ringing, "connecting" and timing out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from callctl.media.errors import BadSdp

#: Media sections we accept in one description (ours has two: audio and video).
MAX_MEDIA = 8
#: What our peer connection can send and receive on the audio stream.
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma"})


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
    for media in active:
        if media.kind not in ("audio", "video"):
            raise BadSdp(f"the {what} has a {media.kind!r} section, which callctl does not speak")
        if media.ice is None or not (media.ice.usernameFragment and media.ice.password):
            raise BadSdp(f"the {what}'s {media.kind} has no ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise BadSdp(f"the {what}'s {media.kind} has no DTLS fingerprint")
        for candidate in media.ice_candidates:
            if not 0 < candidate.port < 65536:
                raise BadSdp(f"the {what} has a candidate with port {candidate.port}")
        if media.kind == "audio" and not any(
            c.mimeType.split("/")[-1].lower() in AUDIO_CODECS for c in media.rtp.codecs
        ):
            raise BadSdp(f"the {what} offers no audio codec callctl speaks (Opus, PCMU, PCMA)")


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
