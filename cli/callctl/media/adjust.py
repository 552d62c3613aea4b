"""The one place that adjusts aiortc and aioice, at run time, for the versions we verified.

Nothing on disk is patched.  ``tune_aiortc()`` first checks that the installed
aiortc and aioice are in ``VERIFIED`` and still have every internal named
below; anything else stops with one ``UnsupportedStack`` line instead of a
call that silently misbehaves.  The adjustments, each for a measured reason:

- No public STUN default: aiortc falls back to a Google STUN server when
  iceServers is None; we always pass a list, and also make the fallback empty.
- Host candidates on a machine whose only interface is loopback (a
  container, a network namespace): aioice skips 127.0.0.1 and would gather
  nothing, so the call would never connect; we fall back to it.
- Consent freshness: detect a vanished peer in ~3-4 s instead of ~30 s.
- Opus for voice: mono, the call's bitrate, in-band FEC (``voice.py``),
  through the sender's ``get_encoder`` hook; the SDP is unchanged
  (opus/48000/2, as RFC 7587 requires), so any WebRTC peer decodes it.
- The audio-level header extension computed with numpy (``voice.dbov``).
- Audio playout is ours (``playout.py``): aiortc's fixed audio jitter buffer
  is replaced by a pass-through, and its timestamp mapper (which takes a
  reordered packet for a wrap) by ``SerialTimestampMapper``.
  ``CALLCTL_STOCK_AUDIO=1`` keeps aiortc's own buffer and writes frames
  straight to the sinks (for A/B measurements).
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

from callctl.media.errors import UnsupportedStack

#: ICE consent checks: every second, and 3 misses end the path (aioice: 5 s x 6).
CONSENT_INTERVAL_S = 1
CONSENT_FAILURES = 3

#: Versions whose internals (below) were read and tested: (first, first not verified).
VERIFIED = {"aiortc": ((1, 16), (1, 17)), "aioice": ((0, 13), (0, 14))}

#: The internals we replace, by module: each must exist, or the guard refuses.
INTERNALS = {
    "aioice.ice": ("get_host_addresses", "CONSENT_INTERVAL", "CONSENT_FAILURES"),
    "aiortc.rtcicetransport": ("RTCIceGatherer",),
    "aiortc.rtcrtpsender": ("get_encoder",),
    "aiortc.rtp": ("compute_audio_level_dbov",),
    "aiortc.rtcrtpreceiver": ("JitterBuffer", "TimestampMapper"),
}

STOCK_AUDIO = os.environ.get("CALLCTL_STOCK_AUDIO") == "1"

_tuned = False


def _version(package: str) -> tuple[int, ...]:
    text = metadata.version(package)
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def verify_versions(found: dict[str, tuple[int, ...]]) -> None:
    """Refuse versions outside ``VERIFIED`` (one line, and what to do about it)."""
    for package, (low, high) in VERIFIED.items():
        if not low <= found[package][:2] < high:
            wanted = ", ".join(f"{p} {lo[0]}.{lo[1]}.x" for p, (lo, _) in VERIFIED.items())
            have = ", ".join(f"{p} {'.'.join(map(str, v))}" for p, v in found.items())
            raise UnsupportedStack(
                f"callctl is verified with {wanted}; this machine has {have} "
                "(reinstall with scripts/setup, or pip install -e .)"
            )


def check_versions() -> None:
    """The installed aiortc and aioice: verified versions, with every internal we adjust."""
    import importlib

    found = {}
    for package in VERIFIED:
        try:
            found[package] = _version(package)
        except metadata.PackageNotFoundError:
            raise UnsupportedStack(f"{package} is not installed (run scripts/setup)") from None
    verify_versions(found)
    for module_name, names in INTERNALS.items():
        module = importlib.import_module(module_name)
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise UnsupportedStack(f"{module_name} lacks {', '.join(missing)}: aiortc changed")


def tune_aiortc() -> None:
    """Check the versions, then apply the adjustments, once per process."""
    global _tuned
    if _tuned:
        return
    check_versions()
    import aioice.ice
    import aiortc.rtcrtpreceiver
    import aiortc.rtcrtpsender
    import aiortc.rtp
    from aiortc.rtcicetransport import RTCIceGatherer

    from callctl.media.playout import PassThroughJitterBuffer, SerialTimestampMapper
    from callctl.media.voice import dbov, voice_encoder

    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return original(use_ipv4=use_ipv4, use_ipv6=use_ipv6) or ["127.0.0.1"]

    aioice.ice.get_host_addresses = host_addresses
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL_S
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES
    RTCIceGatherer.getDefaultIceServers = classmethod(lambda cls: [])  # type: ignore[method-assign,assignment]  # a run-time replacement

    stock_encoder = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec: Any) -> Any:
        if codec.mimeType.lower() == "audio/opus":
            return voice_encoder()
        return stock_encoder(codec)

    aiortc.rtcrtpsender.get_encoder = get_encoder
    aiortc.rtp.compute_audio_level_dbov = dbov
    if not STOCK_AUDIO:
        stock_buffer = aiortc.rtcrtpreceiver.JitterBuffer

        def jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
            if is_video:
                return stock_buffer(capacity=capacity, prefetch=prefetch, is_video=True)
            return PassThroughJitterBuffer(capacity, prefetch)

        setattr(aiortc.rtcrtpreceiver, "JitterBuffer", jitter_buffer)  # noqa: B010  # a class replaced by a factory
        # reordered packets now reach the decoder: map their timestamps correctly
        setattr(aiortc.rtcrtpreceiver, "TimestampMapper", SerialTimestampMapper)  # noqa: B010
    _tuned = True


def preload() -> None:
    """Import aiortc now (~0.4 s) and adjust it, not in the middle of dialing."""
    tune_aiortc()
