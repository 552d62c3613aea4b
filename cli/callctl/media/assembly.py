"""A call's media, put together from its options: sources, sinks, recorder, peer connection.

``MediaOptions`` is what ``call`` and ``listen`` were asked for; ``check``
validates it before any network traffic (MediaError / DeviceError) and
``build_peer`` opens everything for one call.  The engine asks for a peer and
never names a source, a sink or a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from callctl.media.audio import AudioSink, AudioSource, FileSink
from callctl.media.echo import Processing
from callctl.media.video_codec import resolve as resolve_video_codec
from callctl.media.errors import MediaError
from callctl.media.messages import Messenger
from callctl.media.peer import MediaCallbacks, PeerConnection, VideoSetup
from callctl.media.ring import RingSpec
from callctl.media.registry import AUDIO_SINKS, AUDIO_SOURCES, VIDEO_SINKS, VIDEO_SOURCES, OpenParams
from callctl.media.video_sinks import VideoSink
from callctl.media.video_sources import VideoFormat, VideoSource
from callctl.media.voice import VoiceSettings
from callctl.signaling.protocol import IceServer

#: Recording into one of these keeps the peer's video with its audio.
VIDEO_CONTAINERS = (".mkv", ".webm", ".mp4")


@dataclass
class MediaOptions:
    audio_in: str = "mic"
    audio_out: str = "speaker"
    loop: bool = False
    record: Path | None = None
    #: Opus bitrate we send, kbit/s.
    bitrate_kbps: int = 32
    #: Video: what we send when video is on, where the peer's video goes.
    video_in: str | None = None
    video_out: str = "null"
    video_size: tuple[int, int] = (640, 480)
    fps: float = 15.0
    camera_format: str | None = None
    #: Start with video negotiated but not sent (resume later).
    video_paused: bool = False
    #: STUN/TURN servers of our own (``--ice-server``), tried before the server's.
    ice_servers: list[IceServer] = field(default_factory=list)
    #: Media only through a TURN relay (ICE transport policy "relay").
    relay_only: bool = False
    #: What the speaker plays while a call rings here (callee) and while the callee's device
    #: rings (caller): ``tone``, ``none`` or an audio file (media/ring.py).
    ringtone: str = "tone"
    ringback: str = "tone"
    #: What the speaker plays while the peer holds the call: ``tone``, ``none`` or a file.
    hold_audio: str = "tone"
    #: The microphone path: echo cancellation, noise suppression, gain (None: the default).
    processing: Processing = field(default_factory=Processing)
    #: ``--video-codec``: an encoder name or auto (media/video_codec.py).
    video_codec: str = "auto"

    def ring_spec(self, *, ringback: bool) -> RingSpec:
        return RingSpec.parse(self.ringback if ringback else self.ringtone,
                              "--ringback" if ringback else "--ringtone")

    def hold_spec(self) -> RingSpec:
        return RingSpec.parse(self.hold_audio, "--hold-audio")

    @property
    def video_format(self) -> VideoFormat:
        return VideoFormat(self.video_size[0], self.video_size[1], self.fps)

    @property
    def records_video(self) -> bool:
        return self.record is not None and self.record.suffix.lower() in VIDEO_CONTAINERS

    @property
    def params(self) -> OpenParams:
        return OpenParams(loop=self.loop, video=self.video_format, camera_format=self.camera_format)


def check(opts: MediaOptions) -> None:
    """Validate the call's media specs without opening anything (MediaError / DeviceError)."""
    AUDIO_SOURCES.check(opts.audio_in, opts.params)
    AUDIO_SINKS.check(opts.audio_out, opts.params)
    if opts.record is not None and opts.records_video:
        FileSink.check(opts.record, any_extension=True)
    elif opts.record is not None:
        AUDIO_SINKS.check(f"file:{opts.record}", opts.params)
    if opts.video_in is not None:
        VIDEO_SOURCES.check(opts.video_in, opts.params)
    VIDEO_SINKS.check(opts.video_out, opts.params)
    opts.ring_spec(ringback=False)
    opts.ring_spec(ringback=True)
    opts.hold_spec()
    # before the call (auto's probe of a hardware encoder too, cached): a listen pays it at
    # start-up, not at its first ring; auto never fails, it falls back
    resolve_video_codec(opts.video_codec)


def open_switched(opts: MediaOptions, kind: str, spec: str) -> AudioSource | AudioSink | VideoSource:
    """The device a call switches to mid-call (``callctl switch``): ``kind`` is audio_in, audio_out
    or video_in.  Blocks (devices open slowly): run it off the event loop."""
    params = replace(opts.params, watched=True)
    if kind == "audio_in":
        return AUDIO_SOURCES.open(spec, params)
    if kind == "audio_out":
        return AUDIO_SINKS.open(spec, params)
    if kind == "video_in":
        return VIDEO_SOURCES.open(spec, opts.params)
    raise MediaError(f"nothing to switch called {kind!r}")


def open_video_source(opts: MediaOptions) -> VideoSource:
    """What we send when video is turned on (the camera unless told otherwise)."""
    return VIDEO_SOURCES.open(opts.video_in or "camera", opts.params)


def build_peer(opts: MediaOptions, ice_servers: list[IceServer], *, video_call: bool,
               callbacks: MediaCallbacks, messenger: Messenger | None = None) -> PeerConnection:
    """Open the source and sinks of one call and the peer connection that carries them."""
    from callctl.media.devices import absent_ok
    from callctl.media.recorder import RecordedVideo, Recorder

    # the call's watchdog reports a recording that stops (full disk) as a warning event
    params = replace(opts.params, watched=True)
    with absent_ok():  # a mic or speaker unplugged now: the call starts silent there (watchdog.py)
        source = AUDIO_SOURCES.open(opts.audio_in, params)
    opened: list[AudioSource | AudioSink | VideoSink | VideoSource] = [source]
    try:
        with absent_ok():
            sinks = [AUDIO_SINKS.open(opts.audio_out, params)]
        opened += sinks
        if opts.record is not None and not opts.records_video:
            sinks.append(AUDIO_SINKS.open(f"file:{opts.record}", params))
            opened.append(sinks[-1])
        video = VideoSetup(
            source=open_video_source(opts) if video_call and opts.video_in else None,
            sinks=[VIDEO_SINKS.open(opts.video_out, opts.params)],
            fps=opts.fps,
            sending=not opts.video_paused,
        )
        if video.source is not None:
            opened.append(video.source)
        opened += video.sinks
        if opts.record is not None and opts.records_video:
            recorder = Recorder(opts.record, audio=True, video=video_call,
                                size=opts.video_size, fps=opts.fps, watched=True)
            sinks.append(recorder)
            opened.append(recorder)
            if video_call:
                video.sinks.append(RecordedVideo(recorder))
        return PeerConnection(ice_servers, source, sinks, callbacks, video=video,
                              voice=VoiceSettings(bitrate=opts.bitrate_kbps * 1000),
                              relay_only=opts.relay_only, messenger=messenger, processing=opts.processing,
                              video_codec=resolve_video_codec(opts.video_codec))
    except BaseException:
        for endpoint in reversed(opened):  # nothing opened for a call that never starts stays open
            endpoint.close()
        raise
