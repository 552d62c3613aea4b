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
- Gathering is bounded: aioice waits up to 5 s for a STUN or TURN server
  that does not answer, before the offer (or answer) can go out;
  ``GATHER_TIMEOUT_S`` bounds it, and what each server did (answered,
  refused our credentials, never answered) is recorded on the connection
  (``gathering_report``), because aioice drops those failures silently.
- Triggered checks (RFC 8445 7.3.1.4): a check that arrives on a pair whose
  own check is in progress retransmits that check at once; aioice waits out
  its 500 ms retransmission timer instead.  Through TURN that is every
  call: our first check to the peer's relay is dropped until the peer's check
  has made the relay's permission for us, and the retransmission is what
  gets through (measured: ~450 ms of a 600 ms set-up).
- Check pacing: aioice starts one connectivity check every 20 ms, highest
  priority first, so a relay pair (the lowest) starts ~80 ms after the
  first; ``CHECKS_PER_TICK`` start per tick: all of a bundled call's (at most 3 x 3).
- DTLS with any peer: aiortc offers only ECDHE-ECDSA cipher suites, so as
  the DTLS client it cannot talk to a server whose certificate is RSA
  (GStreamer's webrtcbin, many SIP/WebRTC gateways: "no shared cipher");
  the ECDHE-RSA suites are added (aiortc issues #1081, #1151).
- Consent freshness: detect a vanished peer in ~3-4 s instead of ~30 s.
- Opus for voice: mono, the call's bitrate, in-band FEC (``voice.py``),
  through the sender's ``get_encoder`` hook; the SDP is unchanged
  (opus/48000/2, as RFC 7587 requires), so any WebRTC peer decodes it.
- The audio-level header extension computed with numpy (``voice.dbov``).
- Audio frames are encoded on the event loop: aiortc hands every frame to
  a thread of the default executor and waits for it, and for 20 ms of Opus
  (~60 µs to encode) the hand-off costs more than the work. Video still
  goes to the executor. When ``RTCRtpSender._next_encoded_frame`` is not the
  code this was written for, it is left as it is.
- Audio frames are decoded on the event loop too, where their packet
  arrives: aiortc queues each one for a decoder thread per receiver and
  hands every decoded frame back to the loop.  The audio receiver's queue
  decodes what is put in it; the thread aiortc starts for it returns at once.
  Video keeps its thread.  Guarded by ``decoder_worker``'s code.
- aioice's mDNS module (and dnspython, ~2.7 MiB) is loaded when a peer
  first names a ``.local`` host, not when aioice is imported.
- Audio playout is ours (``playout.py``): aiortc's fixed audio jitter buffer
  is replaced by a pass-through, and its timestamp mapper (which takes a
  reordered packet for a wrap) by ``SerialTimestampMapper``.
  ``CALLCTL_STOCK_AUDIO=1`` keeps aiortc's own buffer and writes frames
  straight to the sinks (for A/B measurements).
- DTMF (``dtmf.py``): RFC 4733 telephone-events on the audio stream.
  ``telephone-event/48000`` and ``/8000`` are negotiated (payload types 110
  and 126: none of aiortc's audio or video ones, which share the bundle),
  always after the real audio codecs, offered or answered, so a peer that
  lists them first cannot make one our send codec.  A received
  telephone-event packet is taken before aiortc's receiver would queue it
  for its decoder (which has none for it: its decoder thread dies and the
  peer's audio stops); it feeds the stream's statistics and the receiver's
  ``attach_dtmf_receiver`` callback.  A sender with ``attach_dtmf_sender``
  has its outgoing RTP packets passed through its rewrite function in
  ``RTCDtlsTransport._send_rtp``, before encryption: that is where Opus
  packets become telephone-event packets.  These internals have their own
  guard (``DTMF_INTERNALS``): when they are not what it expects, DTMF is
  unavailable (one log line, ``dtmf_problem()`` says why), nothing is
  negotiated, and the call is otherwise the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

from callctl.media.errors import UnsupportedStack

#: ICE consent checks: every second, and 3 misses end the path (aioice: 5 s x 6).
CONSENT_INTERVAL_S = 1
CONSENT_FAILURES = 3

#: A STUN or TURN server gets this long to answer while candidates are gathered.
GATHER_TIMEOUT_S = 0.8

#: DTLS cipher suites: aiortc's ECDSA ones, then the same with RSA (a peer whose certificate is RSA).
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:"
    b"ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)

#: Connectivity checks started per 20 ms tick (aioice: 1).
CHECKS_PER_TICK = 9

#: Versions whose internals (below) were read and tested: (first, first not verified).
VERIFIED = {"aiortc": ((1, 16), (1, 17)), "aioice": ((0, 13), (0, 14))}

#: The internals we replace, by module: each must exist, or the guard refuses.
INTERNALS = {
    "aioice.ice": ("get_host_addresses", "CONSENT_INTERVAL", "CONSENT_FAILURES", "relayed_candidate",
                   "server_reflexive_candidate", "Connection", "CandidatePair"),
    "aioice.stun": ("Transaction",),
    "aiortc.rtcicetransport": ("RTCIceGatherer",),
    "aiortc.rtcdtlstransport": ("RTCCertificate",),
    "aiortc.rtcrtpsender": ("get_encoder",),
    "aiortc.rtp": ("compute_audio_level_dbov",),
    "aiortc.rtcrtpreceiver": ("JitterBuffer", "TimestampMapper", "get_decoder"),
}

STOCK_AUDIO = os.environ.get("CALLCTL_STOCK_AUDIO") == "1"
#: "lost packets are concealed" has been said (once a process)
_said_no_fec: list[bool] = []

#: DTMF: the telephone-event codecs offered, (payload type, clock rate): Opus's clock, PCMU/PCMA's.
TELEPHONE_EVENTS = ((110, 48000), (126, 8000))
TELEPHONE_EVENT = "audio/telephone-event"

#: The aiortc internals DTMF uses, by module (each must exist, or DTMF is unavailable) ...
DTMF_INTERNALS = {
    "aiortc.codecs": ("CODECS",),
    "aiortc.rtcpeerconnection": ("find_common_codecs",),
    "aiortc.rtcdtlstransport": ("RTCDtlsTransport", "RtpRouter"),
    "aiortc.rtcrtpreceiver": ("RTCRtpReceiver", "StreamStatistics"),
    "aiortc.rtcrtptransceiver": ("RTCRtpTransceiver",),
    "aiortc.rtcrtpparameters": ("RTCRtpCodecParameters",),
    "aiortc.rtp": ("is_rtcp",),
}
#: ... and (module, class, method it must have, attributes its ``__init__`` must set).
DTMF_ATTRIBUTES = (
    ("aiortc.rtcdtlstransport", "RTCDtlsTransport", "_send_rtp", ("_rtp_router",)),
    ("aiortc.rtcdtlstransport", "RtpRouter", "register_sender", ("senders",)),
    ("aiortc.rtcrtpreceiver", "RTCRtpReceiver", "_handle_rtp_packet",
     ("_enabled", "_RTCRtpReceiver__codecs", "_RTCRtpReceiver__remote_streams")),
    ("aiortc.rtcrtpreceiver", "StreamStatistics", "add", ("_last_arrival", "_last_timestamp")),
    ("aiortc.rtcrtptransceiver", "RTCRtpTransceiver", "__init__", ("_codecs",)),
)

log = logging.getLogger("callctl.media")

#: Why DTMF is unavailable in this process (None: it is available).
_dtmf_problem: str | None = None

_tuned = False

#: The outcomes of one connection's gathering: ("stun"|"turn", "ok"|"refused"|"unreachable"|detail).
_gathering: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "callctl_gathering", default=None)


def gathering_report(connection: Any) -> list[tuple[str, str]]:
    """What the STUN and TURN servers did for this aioice connection's gathering."""
    return list(getattr(connection, "_callctl_gathering", []))


def _ice_connection(pc: Any) -> Any:
    """The aioice connection under an aiortc peer connection (bundled: one), or None."""
    for transceiver in pc.getTransceivers():
        dtls = getattr(transceiver.sender, "transport", None)
        ice = getattr(dtls, "transport", None)
        gatherer = getattr(ice, "iceGatherer", None)
        connection = getattr(gatherer, "_connection", None)
        if connection is not None:
            return connection
    return None


def gathering_outcomes(pc: Any) -> tuple[dict[str, str], set[str]] | None:
    """What STUN and TURN did while ``pc`` gathered ({kind: outcome}), and the candidate types got."""
    connection = _ice_connection(pc)
    if connection is None:
        return None
    outcomes = dict(gathering_report(connection))
    return outcomes, {c.type for c in connection.local_candidates}


def selected_pair(pc: Any) -> tuple[str, str] | None:
    """(local, remote) candidate types of the pair ICE nominated, once it has one."""
    connection = _ice_connection(pc)
    nominated = getattr(connection, "_nominated", None) or {}
    pair = nominated.get(1)
    if pair is None:
        return None
    return str(pair.local_candidate.type), str(pair.remote_candidate.type)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "unreachable"  # still waiting at the deadline
    from aioice import stun

    if isinstance(exc, stun.TransactionTimeout):
        return "unreachable"
    if isinstance(exc, stun.TransactionFailed):
        code = exc.response.attributes.get("ERROR-CODE", (0, ""))
        if code[0] in (401, 403, 431, 441):
            return "refused"
        return f"error {code[0]} {code[1]}".strip()
    if isinstance(exc, OSError):
        return "unreachable"
    return f"error {type(exc).__name__}: {exc}"


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


def check_installed() -> None:
    """The installed aiortc and aioice are the verified versions (their metadata: nothing imported)."""
    found = {}
    for package in VERIFIED:
        try:
            found[package] = _version(package)
        except metadata.PackageNotFoundError:
            raise UnsupportedStack(f"{package} is not installed (run scripts/setup)") from None
    verify_versions(found)


def check_versions() -> None:
    """The installed aiortc and aioice: verified versions, with every internal we adjust."""
    import importlib

    check_installed()
    _defer_mdns()
    for module_name, names in INTERNALS.items():
        module = importlib.import_module(module_name)
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise UnsupportedStack(f"{module_name} lacks {', '.join(missing)}: aiortc changed")
    from aioice import stun

    missing = [n for n in ("_check_periodic", "check_incoming", "check_start_task", "get_component_candidates")
               if not hasattr(importlib.import_module("aioice.ice").Connection, n)]
    if missing:
        raise UnsupportedStack(f"aioice.ice.Connection lacks {', '.join(missing)}: aioice changed")
    from aiortc.rtcdtlstransport import RTCCertificate

    if not hasattr(RTCCertificate, "_create_ssl_context"):
        raise UnsupportedStack("aiortc's RTCCertificate has no _create_ssl_context: aiortc changed")
    # the triggered-check retransmit reads a transaction's request and address
    if not {"_Transaction__request", "_Transaction__addr"} <= set(stun.Transaction.__init__.__code__.co_names):
        raise UnsupportedStack("aioice.stun.Transaction changed: no request/address to retransmit")


def _defer_mdns() -> None:
    """aioice's mDNS module is loaded when a peer first names a ``.local`` host, not with aioice.

    It imports dnspython (~40 ms, ~2.7 MiB) at aioice's import, for what only a
    browser's hidden host candidates need.  A stand-in takes its place in
    ``sys.modules`` before aioice is imported: ``is_mdns_hostname`` (asked of
    every remote candidate) loads the real module only for a name ending in
    ``.local``, and any other name loads it; from then on the stand-in holds
    the real module's names.
    """
    import importlib.machinery
    import importlib.util
    import sys
    import types

    if "aioice" in sys.modules:
        return
    package = importlib.util.find_spec("aioice")  # a top-level name: found, not imported
    locations = package.submodule_search_locations if package is not None else None
    spec = importlib.machinery.PathFinder.find_spec("aioice.mdns", list(locations or []))
    if spec is None or spec.loader is None:
        return
    loader, mdns_spec = spec.loader, spec
    loading = threading.Lock()

    class DeferredModule(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            with loading:
                if "create_mdns_protocol" not in self.__dict__:
                    real = importlib.util.module_from_spec(mdns_spec)
                    loader.exec_module(real)
                    self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
            return self.__dict__[name]

    stand_in = DeferredModule("aioice.mdns")
    stand_in.__file__ = spec.origin

    def is_mdns_hostname(name: str) -> bool:
        return name.endswith(".local") and stand_in.__getattr__("is_mdns_hostname")(name)

    stand_in.is_mdns_hostname = is_mdns_hostname  # type: ignore[attr-defined]
    # aioice's own annotations name it when its module is imported; the real class once loaded
    stand_in.MDnsProtocol = Any  # type: ignore[attr-defined]
    sys.modules["aioice.mdns"] = stand_in


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
    from callctl.media.video_codec import encoder_for
    from callctl.media.voice import dbov, fec_decode_problem, preload_libopus, voice_decoder, voice_encoder

    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return original(use_ipv4=use_ipv4, use_ipv6=use_ipv6) or ["127.0.0.1"]

    aioice.ice.get_host_addresses = host_addresses
    _bound_gathering(aioice.ice)
    _retransmit_triggered_checks(aioice.ice)
    _pace_checks(aioice.ice)
    _any_certificate()
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL_S
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES
    RTCIceGatherer.getDefaultIceServers = classmethod(lambda cls: [])  # type: ignore[method-assign,assignment]  # a run-time replacement

    stock_encoder = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec: Any) -> Any:
        if codec.mimeType.lower() == "audio/opus":
            return voice_encoder()
        return encoder_for(codec.mimeType) or stock_encoder(codec)

    aiortc.rtcrtpsender.get_encoder = get_encoder
    aiortc.rtp.compute_audio_level_dbov = dbov
    _encode_audio_inline(aiortc.rtcrtpsender)
    _loss_to_encoder(aiortc.rtcrtpsender)
    if not STOCK_AUDIO:
        stock_buffer = aiortc.rtcrtpreceiver.JitterBuffer

        def jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
            if is_video:
                return stock_buffer(capacity=capacity, prefetch=prefetch, is_video=True)
            return PassThroughJitterBuffer(capacity, prefetch)

        setattr(aiortc.rtcrtpreceiver, "JitterBuffer", jitter_buffer)  # noqa: B010  # a class replaced by a factory
        # reordered packets now reach the decoder: map their timestamps correctly
        setattr(aiortc.rtcrtpreceiver, "TimestampMapper", SerialTimestampMapper)  # noqa: B010
        # libopus loads on a thread of its own now, and is asked for at the first Opus packet
        # (on aiortc's decoder thread): not on the call's start-up path
        preload_libopus()
        stock_decoder = aiortc.rtcrtpreceiver.get_decoder

        def get_decoder(codec: Any) -> Any:
            if codec.mimeType.lower() == "audio/opus":
                problem = fec_decode_problem()
                if problem is None:
                    return voice_decoder()
                if not _said_no_fec:
                    _said_no_fec.append(True)
                    log.info("lost audio packets are concealed, not rebuilt from FEC: %s", problem)
            return stock_decoder(codec)

        aiortc.rtcrtpreceiver.get_decoder = get_decoder
    _decode_audio_inline(aiortc.rtcrtpreceiver)
    _telephone_events()
    _tuned = True


#: What aiortc's RTCRtpSender._next_encoded_frame reads and calls (1.16-1.17): the audio
#: replacement below does the same, but encodes without the executor.
_NEXT_ENCODED_FRAME_NAMES = frozenset({
    "_RTCRtpSender__track", "recv", "_enabled", "_RTCRtpSender__encoder", "get_encoder", "isinstance",
    "Frame", "AudioFrame", "rtp", "compute_audio_level_dbov", "_RTCRtpSender__force_keyframe",
    "_RTCRtpSender__loop", "run_in_executor", "encode", "pack", "RTCEncodedFrame"})


def _encode_audio_inline(sender_module: Any) -> None:
    sender_class = sender_module.RTCRtpSender
    stock = sender_class._next_encoded_frame
    if set(stock.__code__.co_names) != _NEXT_ENCODED_FRAME_NAMES:
        log.debug("aiortc's sender is not the one verified: audio is encoded on its executor")
        return
    from av import AudioFrame

    async def next_encoded_frame(self: Any, codec: Any) -> Any:
        if self.kind != "audio":
            return await stock(self, codec)
        data = await self._RTCRtpSender__track.recv()
        if not self._enabled:
            return None  # read and dropped, as aiortc does
        if self._RTCRtpSender__encoder is None:
            self._RTCRtpSender__encoder = sender_module.get_encoder(codec)
        encoder = self._RTCRtpSender__encoder
        if isinstance(data, AudioFrame):
            level = sender_module.rtp.compute_audio_level_dbov(data)
            payloads, timestamp = encoder.encode(data, False)
        else:  # already encoded
            level = None
            payloads, timestamp = encoder.pack(data)
        if not payloads:
            return None
        return sender_module.RTCEncodedFrame(payloads, timestamp, level)

    sender_class._next_encoded_frame = next_encoded_frame


def audio_encoder(pc: Any) -> Any:
    """The encoder of a peer connection's audio sender (None before its first frame)."""
    for sender in pc.getSenders():
        if sender.kind == "audio":
            return getattr(sender, "_RTCRtpSender__encoder", None)
    return None


def _loss_to_encoder(sender_module: Any) -> None:
    """Each RTCP report of what the peer lost of our audio goes to the encoder (``note_loss``).

    The Opus encoder plans its in-band FEC for that loss (voice.LossPlan).
    aiortc reads the same reports into its statistics only.
    """
    sender_class = sender_module.RTCRtpSender
    stock = sender_class._handle_rtcp_packet
    if not {"fraction_lost", "_ssrc", "_RTCRtpSender__encoder"} <= set(stock.__code__.co_names):
        log.debug("aiortc's sender is not the one verified: FEC stays planned for no loss")
        return
    from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

    async def handle_rtcp_packet(self: Any, packet: Any) -> None:
        await stock(self, packet)
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            note = getattr(self._RTCRtpSender__encoder, "note_loss", None)
            if note is not None:
                for report in packet.reports:
                    if report.ssrc == self._ssrc:
                        note(report.fraction_lost)

    sender_class._handle_rtcp_packet = handle_rtcp_packet


#: What aiortc's decoder_worker reads and calls (1.16): the audio replacement below does the same
#: on the event loop, where the packet arrives.
_DECODER_WORKER_NAMES = frozenset({
    "get", "asyncio", "run_coroutine_threadsafe", "put", "name", "get_decoder", "decode", "av", "FFmpegError",
    "logger", "warning", "mimeType", "split", "set"})


def _decode_audio_inline(receiver_module: Any) -> None:
    """Audio is decoded on the event loop, where its packet arrived, not on a thread of its own.

    aiortc queues each encoded frame for a decoder thread per receiver and
    hands every decoded frame back to the loop (``run_coroutine_threadsafe``);
    for 20 ms of Opus (~40 µs to decode) the two hand-offs cost more than the
    work.  An audio receiver's decoder queue becomes an ``InlineDecoder``, and
    the thread aiortc starts for it returns at once.  Video keeps its thread.
    """
    stock_worker = receiver_module.decoder_worker
    receiver_class = receiver_module.RTCRtpReceiver
    if (set(stock_worker.__code__.co_names) != _DECODER_WORKER_NAMES
            or "decoder_worker" not in receiver_class.receive.__code__.co_names
            or "_RTCRtpReceiver__decoder_queue" not in receiver_class._handle_rtp_packet.__code__.co_names):
        log.debug("aiortc's receiver is not the one verified: audio is decoded on its thread")
        return
    import av

    class InlineDecoder:
        """Stands in for an audio receiver's decoder queue: what is put is decoded at once."""

        def __init__(self, output: Any, error: Any) -> None:
            self._output = output  # the remote track's asyncio queue
            self._error = error
            self._decoder: Any = None
            self._codec_name: str | None = None

        def put(self, task: Any) -> None:
            if task is None:  # the receiver stops: so does its track
                self._output.put_nowait(None)
                return
            codec, encoded_frame = task
            try:
                if codec.name != self._codec_name:
                    self._decoder = receiver_module.get_decoder(codec)
                    self._codec_name = codec.name
                frames = self._decoder.decode(encoded_frame)
            except av.FFmpegError as exc:  # as aiortc's thread: say it, keep the decoder's state
                receiver_module.logger.warning("RTCRtpReceiver(audio) failed to decode %s frame: %s",
                                               codec.name, exc)
                self._error.set()
                return
            except Exception:  # raised here it would end the transport's receive loop
                log.exception("audio decoder: frame dropped")
                self._error.set()
                return
            for frame in frames:
                self._output.put_nowait(frame)

    def decoder_worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
        if isinstance(input_q, InlineDecoder):
            return  # decoded on the loop
        stock_worker(loop, input_q, output_q, decode_error)

    stock_receive = receiver_class.receive

    async def receive(self: Any, parameters: Any) -> None:
        if self._RTCRtpReceiver__kind == "audio" and not isinstance(self._RTCRtpReceiver__decoder_queue,
                                                                     InlineDecoder):
            self._RTCRtpReceiver__decoder_queue = InlineDecoder(self._track._queue,
                                                                self._RTCRtpReceiver__decoder_error)
        await stock_receive(self, parameters)

    receiver_module.decoder_worker = decoder_worker
    receiver_class.receive = receive


def _bound_gathering(ice: Any) -> None:
    """A deadline for STUN/TURN while gathering, and a record of what each server did."""
    stock_relayed, stock_reflexive = ice.relayed_candidate, ice.server_reflexive_candidate
    stock_component = ice.Connection.get_component_candidates

    def recorded(kind: str, stock: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            report = _gathering.get()
            try:
                result = await stock(*args, **kwargs)
            except BaseException as exc:
                if report is not None:
                    report.append((kind, _outcome(exc)))
                raise
            if report is not None:
                report.append((kind, "ok"))
            return result
        return call

    async def get_component_candidates(self: Any, component: int, addresses: list[str],
                                       timeout: float = GATHER_TIMEOUT_S) -> Any:
        report: list[tuple[str, str]] = []
        self._callctl_gathering = report
        token = _gathering.set(report)  # the tasks aioice starts below inherit it
        try:
            return await stock_component(self, component, addresses, timeout=GATHER_TIMEOUT_S)
        finally:
            _gathering.reset(token)

    ice.relayed_candidate = recorded("turn", stock_relayed)
    ice.server_reflexive_candidate = recorded("stun", stock_reflexive)
    ice.Connection.get_component_candidates = get_component_candidates


def _retransmit_triggered_checks(ice: Any) -> None:
    """A check received on a pair whose own check is in progress: send ours again now."""
    in_progress = ice.CandidatePair.State.IN_PROGRESS
    stock = ice.Connection.check_incoming

    def check_incoming(self: Any, message: Any, addr: tuple[str, int], protocol: Any) -> None:
        stock(self, message, addr, protocol)
        for pair in self._check_list:
            if pair.protocol is protocol and pair.remote_addr == addr and pair.state == in_progress:
                for transaction in list(protocol.transactions.values()):
                    if getattr(transaction, "_Transaction__addr", None) == addr:
                        protocol.send_stun(transaction._Transaction__request, addr)

    ice.Connection.check_incoming = check_incoming


def _pace_checks(ice: Any) -> None:
    """Up to ``CHECKS_PER_TICK`` checks started per tick of aioice's 20 ms pacing timer."""
    waiting, frozen = ice.CandidatePair.State.WAITING, ice.CandidatePair.State.FROZEN
    stock = ice.Connection._check_periodic

    def check_periodic(self: Any) -> bool:
        more: bool = stock(self)
        for _ in range(CHECKS_PER_TICK - 1):
            idle = [p for p in self._check_list if p.task is None]
            pair = next((p for p in idle if p.state == waiting), None) or next(
                (p for p in idle if p.state == frozen), None)
            if not more or pair is None:
                break
            self.check_start_task(pair)
        return more

    ice.Connection._check_periodic = check_periodic


def _any_certificate() -> None:
    """DTLS contexts that also take a peer's RSA certificate (aiortc: ECDSA only)."""
    from aiortc.rtcdtlstransport import RTCCertificate

    stock = RTCCertificate._create_ssl_context

    def create_ssl_context(self: Any, srtp_profiles: Any) -> Any:
        ctx = stock(self, srtp_profiles)
        ctx.set_cipher_list(DTLS_CIPHERS)
        return ctx

    RTCCertificate._create_ssl_context = create_ssl_context  # type: ignore[method-assign]  # a run-time replacement


def dtmf_internals_problem() -> str | None:
    """What of aiortc's internals DTMF needs is missing or changed (None: all is as verified)."""
    import importlib

    for module_name, names in DTMF_INTERNALS.items():
        module = importlib.import_module(module_name)
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            return f"{module_name} lacks {', '.join(missing)}"
    for module_name, class_name, method, attributes in DTMF_ATTRIBUTES:
        cls = getattr(importlib.import_module(module_name), class_name)
        init = getattr(cls.__init__, "__code__", None)
        if not callable(getattr(cls, method, None)) or init is None:
            return f"{module_name}.{class_name} has no {method}"
        missing = [a for a in attributes if a not in init.co_names]
        if missing:
            return f"{module_name}.{class_name} no longer sets {', '.join(missing)}"
    from aiortc.codecs import CODECS
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    if not isinstance(CODECS, dict) or not isinstance(CODECS.get("audio"), list):
        return "aiortc.codecs.CODECS has no list of audio codecs"
    if not (inspect.iscoroutinefunction(RTCDtlsTransport._send_rtp)
            and inspect.iscoroutinefunction(RTCRtpReceiver._handle_rtp_packet)
            and "arrival_time_ms" in inspect.signature(RTCRtpReceiver._handle_rtp_packet).parameters):
        return "RTCDtlsTransport._send_rtp or RTCRtpReceiver._handle_rtp_packet changed"
    return None


def dtmf_problem() -> str | None:
    """Why DTMF is unavailable with this aiortc (None: it is available)."""
    return _dtmf_problem


def is_telephone_event(codec: Any) -> bool:
    return str(codec.mimeType).lower() == TELEPHONE_EVENT


def negotiated_codecs(transceiver: Any) -> list[Any]:
    """A transceiver's negotiated codecs, the send codec first (aiortc keeps them private)."""
    return list(getattr(transceiver, "_codecs", None) or [])


def attach_dtmf_sender(sender: Any, rewrite: Callable[[bytes], bytes] | None) -> None:
    """Every RTP packet ``sender`` sends goes through ``rewrite`` before encryption (None: no more)."""
    if rewrite is None:
        vars(sender).pop("_callctl_dtmf", None)
    else:
        sender._callctl_dtmf = rewrite


def attach_dtmf_receiver(receiver: Any, on_event: Callable[[bytes, int, bool], None] | None) -> None:
    """Each telephone-event packet ``receiver`` gets: ``on_event(payload, timestamp, marker)``.

    Called on the event loop; None: no more (the packets are still taken from the decoder).
    """
    if on_event is None:
        vars(receiver).pop("_callctl_dtmf", None)
    else:
        receiver._callctl_dtmf = on_event


def _telephone_events() -> None:
    """Negotiate telephone-events, take them before the decoder, rewrite a DTMF sender's packets."""
    global _dtmf_problem
    problem = dtmf_internals_problem()
    if problem is not None:
        _dtmf_problem = f"{problem}: DTMF is unavailable with this aiortc"
        log.warning("%s", _dtmf_problem)
        return
    import aiortc.rtcdtlstransport
    import aiortc.rtcpeerconnection
    import aiortc.rtcrtpreceiver
    from aiortc.codecs import CODECS
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtp import is_rtcp

    audio = CODECS["audio"]
    if not any(is_telephone_event(c) for c in audio):
        audio += [RTCRtpCodecParameters(mimeType="audio/telephone-event", clockRate=rate,
                                        payloadType=pt, parameters={"0-15": None})
                  for pt, rate in TELEPHONE_EVENTS]

    stock_common = aiortc.rtcpeerconnection.find_common_codecs

    def find_common_codecs(local: list[Any], remote: list[Any]) -> list[Any]:
        common: list[Any] = stock_common(local, remote)
        events = [c for c in common if is_telephone_event(c)]
        if not events:
            return common
        media = [c for c in common if not is_telephone_event(c)]
        return media + events if media else []  # events alone are no audio codec: refused

    setattr(aiortc.rtcpeerconnection, "find_common_codecs", find_common_codecs)  # noqa: B010
    _take_telephone_events(aiortc.rtcrtpreceiver)
    _rewrite_dtmf_senders(aiortc.rtcdtlstransport.RTCDtlsTransport, is_rtcp)


def _take_telephone_events(module: Any) -> None:
    """Received telephone-event packets: counted, handed to the receiver's callback, never decoded."""
    statistics = module.StreamStatistics
    stock = module.RTCRtpReceiver._handle_rtp_packet

    async def handle_rtp_packet(self: Any, packet: Any, arrival_time_ms: int) -> None:
        codec = self._RTCRtpReceiver__codecs.get(packet.payload_type)
        if codec is None or not is_telephone_event(codec):
            await stock(self, packet, arrival_time_ms=arrival_time_ms)
            return
        if not self._enabled:
            return
        # the events take the audio's sequence numbers: uncounted, they would be reported lost;
        # their timestamp is the event's start, not their time: the jitter is the audio's alone
        streams = self._RTCRtpReceiver__remote_streams
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = statistics(codec.clockRate)
        last = stream._last_arrival, stream._last_timestamp
        if last[1] is not None:
            stream._last_timestamp = packet.timestamp  # add() takes no jitter sample from it
        stream.add(packet)
        if last[1] is not None:
            stream._last_arrival, stream._last_timestamp = last
        on_event = getattr(self, "_callctl_dtmf", None)
        if on_event is not None:
            try:
                on_event(packet.payload, packet.timestamp, bool(packet.marker))
            except Exception:  # a broken callback must not stop the peer's audio
                log.exception("DTMF receiver")

    module.RTCRtpReceiver._handle_rtp_packet = handle_rtp_packet


def _rewrite_dtmf_senders(transport_class: Any, is_rtcp: Callable[[bytes], bool]) -> None:
    """A sender with a DTMF rewrite function: its RTP packets pass through it before encryption."""
    stock = transport_class._send_rtp

    async def send_rtp(self: Any, data: bytes) -> None:
        if len(data) >= 12 and not is_rtcp(data):
            sender = self._rtp_router.senders.get(int.from_bytes(data[8:12], "big"))
            rewrite = getattr(sender, "_callctl_dtmf", None)
            if rewrite is not None:
                try:
                    data = rewrite(data)
                except Exception:  # the audio goes on, without DTMF
                    log.exception("DTMF sender: detached")
                    attach_dtmf_sender(sender, None)
        await stock(self, data)

    transport_class._send_rtp = send_rtp


def preload() -> None:
    """Import aiortc now and adjust it, not in the middle of dialing."""
    tune_aiortc()
