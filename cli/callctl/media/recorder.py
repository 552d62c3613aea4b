"""Recording the peer's audio and video into one container (mkv, webm, mp4), in a thread."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from callctl.media.audio import MUX_OPTIONS, FileSink, Recording
from callctl.media.errors import MediaError
from callctl.media.video_sinks import VideoSink

#: Video containers by extension: (format, video codec, audio codec).
VIDEO_FILES = {
    ".mkv": ("matroska", "libvpx", "libopus"),
    ".webm": ("webm", "libvpx", "libopus"),
    ".mp4": ("mp4", "libx264", "aac"),
}


class Recorder(Recording):
    """Remote audio and video into one container, written in a thread.

    Timestamps come from the wall clock since the recording started, so both
    streams line up and the file lasts as long as the call.  ``close()``
    flushes and finalizes whatever ended the call.

    A recording that cannot go on (a full disk, a file that cannot be
    written) stops there and never takes the call with it, as an audio
    file's does (``Recording``: what was written stays, later frames are
    dropped, ``failure`` says why, and it is said once: a ``warning`` event
    when ``watched``).  Each packet goes to the file at once and Matroska
    closes a cluster every second (``MUX_OPTIONS``).
    """

    def __init__(self, path: Path, *, audio: bool = True, video: bool = True,
                 size: tuple[int, int] = (640, 480), fps: float = 15.0, watched: bool = False) -> None:
        suffix = path.suffix.lower()
        if suffix not in VIDEO_FILES:
            raise MediaError(
                f"cannot record video to {path}: use one of {', '.join(sorted(VIDEO_FILES))}"
            )
        FileSink.check(path, any_extension=True)
        super().__init__(path, queue_size=200, watched=watched, thread="recorder")
        self.name = f"record:{path}"
        self.size = size
        self.fps = fps
        self.want_audio = audio
        self.want_video = video
        self._start = time.monotonic()
        self._start_writing()

    # the two faces: an audio sink and a video sink
    def write(self, pcm: np.ndarray) -> None:
        self._put(("audio", time.monotonic() - self._start, pcm))

    def write_video(self, frame: Any) -> None:
        self._put(("video", time.monotonic() - self._start, frame))

    def _record(self) -> None:
        import fractions

        import av

        fmt, vcodec, acodec = VIDEO_FILES[self.path.suffix.lower()]
        with av.open(str(self.path), "w", format=fmt, options=MUX_OPTIONS.get(fmt, {})) as container:
            self._opened()
            # the video stream takes the size of the first frame that arrives
            # (what the peer sends), so hold early items until then (2 s at most)
            held: list[tuple[str, float, Any]] = []
            deadline = time.monotonic() + 2.0
            while self.want_video and time.monotonic() < deadline and not self._closing.is_set():
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is None:
                    self._closing.set()
                    break
                held.append(item)
                if item[0] == "video":
                    self.size = (item[2].width, item[2].height)
                    break
            # add_stream is typed for any stream kind: these are one video and one audio
            vstream: av.VideoStream | None = None
            astream: av.AudioStream | None = None
            if self.want_video:
                vstream = cast(av.VideoStream, container.add_stream(vcodec, rate=int(round(self.fps))))
                vstream.width, vstream.height = self.size
                vstream.pix_fmt = "yuv420p"
                vstream.time_base = fractions.Fraction(1, 1000)
                vstream.codec_context.time_base = fractions.Fraction(1, 1000)
                if vcodec == "libx264":
                    vstream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency"}
                else:
                    vstream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
            if self.want_audio:
                astream = cast(av.AudioStream, container.add_stream(acodec, rate=48000))
                astream.layout = "mono"
            from av.video.reformatter import VideoReformatter

            # our own reformatter: frames are shared with other sinks, and a
            # frame's built-in one must not be used from two threads at once
            reformatter = VideoReformatter()
            audio_pts = 0
            last_video_ms = -1
            while True:
                item = held.pop(0) if held else self._get()
                if item is None:
                    break
                kind, at, payload = item
                if kind == "audio" and astream is not None:
                    sound = av.AudioFrame.from_ndarray(payload.reshape(1, -1), format="s16", layout="mono")
                    sound.sample_rate = 48000
                    # audio follows its own sample count, resynced to the clock after gaps
                    audio_pts = max(audio_pts, int(at * 48000) - payload.size)
                    sound.pts = audio_pts
                    audio_pts += payload.size
                    for packet in astream.encode(sound):
                        container.mux(packet)
                elif kind == "video" and vstream is not None:
                    ms = int(at * 1000)
                    if ms <= last_video_ms:
                        continue
                    last_video_ms = ms
                    frame = reformatter.reformat(payload, self.size[0], self.size[1], "yuv420p")
                    if frame is payload:  # unchanged: copy before stamping our own pts on it
                        frame = av.VideoFrame.from_ndarray(payload.to_ndarray(), format="yuv420p")
                    frame.pts = ms
                    frame.time_base = fractions.Fraction(1, 1000)
                    for packet in vstream.encode(frame):
                        container.mux(packet)
            for packet in [*(vstream.encode(None) if vstream else []),
                           *(astream.encode(None) if astream else [])]:
                container.mux(packet)



class RecordedVideo(VideoSink):
    """A Recorder's video side, seen as a video sink (the recorder itself is the audio sink)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.name = f"{recorder.name}:video"
        self.recorder = recorder

    def write(self, frame: Any) -> None:
        super().write(frame)
        self.recorder.write_video(frame)

    def close(self) -> None:
        pass  # the recorder is closed once, as an audio sink


class FileVideoSink(VideoSink):
    """The peer's video alone into a file (mkv/webm/mp4)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        super().__init__()
        self.name = f"file:{path}"
        self._recorder = Recorder(path, audio=False, video=True, size=size, fps=fps)

    def write(self, frame: Any) -> None:
        super().write(frame)
        self._recorder.write_video(frame)

    def close(self) -> None:
        self._recorder.close()
