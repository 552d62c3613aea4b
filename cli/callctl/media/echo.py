"""A speakerphone's microphone path: echo cancellation, noise suppression, automatic gain.

WebRTC's audio processing module (AEC3, NS, AGC2; the ``pywebrtc-audio``
binding) cleans what the microphone hears before it is sent.  The echo
canceller needs what the speaker played as its reference, on the same clock
as the capture:

* the speaker's PortAudio callback notes each 20 ms frame it hands over, with
  the time PortAudio says its first sample reaches the DAC (``FarEnd.note``);
* the microphone's callback hands each captured frame, with the time its first
  sample left the ADC, to a worker thread (``Processor.submit``) and returns;
* the worker pairs the frame with the far-end samples that were playing at its
  capture time, so that AEC3 is left with only the acoustic path's delay to
  find, runs the module (which releases the GIL) and queues the result for
  the call.

Nothing here runs on the event loop or blocks a PortAudio callback; a device
whose driver reports no timing is timed by the callback's own clock.

Echo cancellation is on by default when a call's source is a microphone and
its sink a speaker, noise suppression with any microphone, gain control only
when asked for (``--aec``/``--noise-suppression``/``--agc`` and their ``--no-``
forms); never for tone or file sources, which have no room around them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from callctl.media.audio import RATE

log = logging.getLogger("callctl.media")

#: The far end is looked up this much after the capture time: room for timing that is a little
#: late, at the cost of as much more delay for AEC3 to find (its range is several hundred ms).
LEAD_S = 0.010
#: How long the worker waits for the speaker to have played a frame's far end.
FAR_WAIT_S = 0.025
#: A far end not written for this long is a speaker that stopped: don't wait for it.
FAR_STALE_S = 0.2
#: Frames waiting for the worker: more and the oldest go.
QUEUE_FRAMES = 10
#: Noise suppression level (0-3: 6, 12, 18, 21 dB).
NS_LEVEL = 2
#: Automatic gain: at most this much is added (a speakerphone's microphone is seldom far below
#: speech level; more would lift the echo canceller's residual with it), and this fast.
AGC_MAX_GAIN_DB = 15.0


def available() -> str | None:
    """None when the audio processing module can be loaded, else why not."""
    try:
        import pywebrtc_audio  # noqa: F401
    except ImportError as exc:
        return f"the audio processing module (pywebrtc-audio) is not installed: {exc}"
    return None


@dataclass(frozen=True)
class Processing:
    """What the microphone path does; None: the default.

    By default a microphone gets noise suppression, and echo cancellation when
    the call plays into a speaker; gain control only when asked for.
    """

    aec: bool | None = None
    noise_suppression: bool | None = None
    agc: bool | None = None

    def resolve(self, mic: bool, speaker: bool) -> Processing:
        """What is on for this source and sink (all False when the source is not a microphone)."""
        if not mic:
            return Processing(False, False, False)
        return Processing(
            aec=speaker if self.aec is None else self.aec,
            noise_suppression=True if self.noise_suppression is None else self.noise_suppression,
            # off unless asked for: its gain lifts what the echo canceller leaves as much as the
            # talker (ERLE 42 dB without it, 25 with it in tests/media/test_echo.py's room)
            agc=False if self.agc is None else self.agc,
        )

    @property
    def any(self) -> bool:
        return bool(self.aec or self.noise_suppression or self.agc)

    def names(self) -> list[str]:
        """What is on: ``aec``, ``noise_suppression``, ``agc`` (status --json ``mic_processing``)."""
        return [name for name in ("aec", "noise_suppression", "agc") if getattr(self, name)]


class SampleClock:
    """When each sample of a device stream is played or taken, from the times its callbacks report.

    A callback may come late (a busy machine), and a device without timing
    information (ALSA plugins) is stamped with the callback's own time, which
    runs ahead while the driver fills its buffer: what stays true is that the
    stream runs at its rate.  So a sample's time is its index over the rate
    plus the earliest offset (reported time - index / rate) seen over the last
    ``WINDOW`` callbacks, which follows a slowly drifting device clock too.
    """

    WINDOW = 100  # 2 s of 20 ms callbacks
    #: An offset this much later than the earliest is a stream that stopped and restarted.
    RESTART_S = 0.2

    def __init__(self) -> None:
        self.samples = 0
        self._offsets: collections.deque[float] = collections.deque(maxlen=self.WINDOW)

    def stamp(self, reported: float, n: int) -> float:
        """The time of the first of the next ``n`` samples, ``reported`` by its callback."""
        offset = reported - self.samples / RATE
        if self._offsets and offset - min(self._offsets) > self.RESTART_S:
            self._offsets.clear()
        self._offsets.append(offset)
        t = min(self._offsets) + self.samples / RATE
        self.samples += n
        return t


class FarEnd:
    """What the speaker played, on PortAudio's clock (``time.monotonic``'s): the echo's reference."""

    def __init__(self, seconds: float = 1.0) -> None:
        self._buf = np.zeros(int(RATE * seconds), np.int16)
        self._end = 0  # samples written so far
        self._t_end = 0.0  # when the sample after the last one written plays
        self._written_at = float("-inf")
        self._clock = SampleClock()
        self._cond = threading.Condition()

    def note(self, pcm: np.ndarray, dac_time: float) -> None:
        """``pcm`` (48 kHz mono) starts playing at ``dac_time`` (the speaker's callback)."""
        with self._cond:
            t = self._clock.stamp(dac_time, pcm.size)
            self._write(pcm)
            self._t_end = t + pcm.size / RATE
            self._written_at = time.monotonic()
            self._cond.notify_all()

    def _write(self, pcm: np.ndarray) -> None:
        n = pcm.size
        size = self._buf.size
        if n >= size:
            pcm, n = pcm[-size:], size
        start = self._end % size
        first = min(n, size - start)
        self._buf[start:start + first] = pcm[:first]
        self._buf[: n - first] = pcm[first:]
        self._end += n

    def wait_for(self, t: float, timeout: float) -> None:
        """Until what plays at ``t`` has been written, ``timeout`` at most (none for a stopped speaker)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._t_end < t:
                now = time.monotonic()
                if now >= deadline or now - self._written_at > FAR_STALE_S:
                    return
                self._cond.wait(deadline - now)

    def take(self, t: float, n: int) -> np.ndarray:
        """The ``n`` samples that play from ``t`` on (silence where the speaker wrote none)."""
        out = np.zeros(n, np.int16)
        with self._cond:
            first = self._end - round((self._t_end - t) * RATE)
            lo, hi = max(first, self._end - self._buf.size, 0), min(first + n, self._end)
            if lo < hi:
                out[lo - first: hi - first] = self._buf[np.arange(lo, hi) % self._buf.size]
        return out


class Processor:
    """One microphone's audio processing, on a thread of its own."""

    def __init__(self, settings: Processing, far: FarEnd | None, deliver: collections.deque[np.ndarray]) -> None:
        from pywebrtc_audio import AudioProcessor

        self.settings = settings
        self.far = far if settings.aec else None
        self._ap = AudioProcessor(
            sample_rate=RATE, num_channels=1,
            echo_cancellation=bool(settings.aec), noise_suppression=bool(settings.noise_suppression),
            auto_gain_control=bool(settings.agc), high_pass_filter=True, ns_level=NS_LEVEL,
            agc_max_gain_db=AGC_MAX_GAIN_DB,
        )
        self._deliver = deliver
        self._clock = SampleClock()
        #: Called on the processing thread with (captured, far end paired with it, processed):
        #: ``preview --echo-test`` measures the echo path with it.
        self.tap: Callable[[np.ndarray, np.ndarray | None, np.ndarray], None] | None = None
        self._queue: collections.deque[tuple[np.ndarray, float]] = collections.deque(maxlen=QUEUE_FRAMES)
        self._wake = threading.Event()
        self._stop = False
        #: The module raised once: the rest of the call goes unprocessed (one log line, not 50 a second).
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="callctl-apm", daemon=True)
        self._thread.start()

    def submit(self, pcm: np.ndarray, adc_time: float) -> None:
        """A captured 20 ms frame and when its first sample was taken (a PortAudio callback)."""
        self._queue.append((pcm, self._clock.stamp(adc_time, pcm.size)))
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._queue and not self._stop:
                pcm, adc_time = self._queue.popleft()
                if self.failed:
                    self._deliver.append(pcm)
                    continue
                try:
                    self._deliver.append(self._process(pcm, adc_time))
                except Exception as exc:  # never lose the microphone over its processing
                    log.error("audio processing failed, the microphone is sent as it is from now on: %s", exc)
                    self.failed = True
                    self._deliver.append(pcm)

    def _process(self, pcm: np.ndarray, adc_time: float) -> np.ndarray:
        far = None
        if self.far is not None:
            at = adc_time + LEAD_S
            self.far.wait_for(at + pcm.size / RATE, FAR_WAIT_S)
            far = self.far.take(at, pcm.size)
        out: np.ndarray = self._ap.process(pcm, far) if far is not None else self._ap.process(pcm)
        if self.tap is not None:
            self.tap(pcm, far, out)
        return out

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)


def link(source: object, sink: object, wanted: Processing) -> Processing:
    """Set up a call's microphone path between its source and its speaker; what is on.

    Called again when either is switched mid-call: a new speaker gets the
    microphone's reference, a new microphone the speaker's.
    """
    from callctl.media.devices import MicSource, SpeakerSink

    mic = source if isinstance(source, MicSource) else None
    speaker = sink if isinstance(sink, SpeakerSink) else None
    on = wanted.resolve(mic is not None, speaker is not None)
    if wanted.aec and not on.aec:
        log.warning("echo cancellation needs a microphone and a speaker: it is off for this call")
    if on.any and (why := available()) is not None:
        asked = wanted.aec or wanted.noise_suppression or wanted.agc  # on the command line, not by default
        log.log(logging.WARNING if asked else logging.INFO, "%s: the microphone is sent as it is", why)
        on = Processing(False, False, False)
    far = FarEnd() if on.aec else None
    if mic is not None:
        log.info("%s: %s", mic.name, ", ".join(on.names()) or "sent as it is")
    if speaker is not None:
        speaker.far_end = far
    if mic is not None:
        mic.process_with(on, far)
    return on


def adc_time(info: Any, frames: int, rate: int) -> float:
    """When a capture callback's first sample was taken, from PortAudio's timing (else the clock)."""
    t = float(info.get("input_buffer_adc_time") or 0.0) if isinstance(info, dict) else 0.0
    return t if t > 0 else time.monotonic() - frames / rate


def dac_time(info: Any, latency: float) -> float:
    """When a playback callback's first sample reaches the DAC, from PortAudio (else clock + latency)."""
    t = float(info.get("output_buffer_dac_time") or 0.0) if isinstance(info, dict) else 0.0
    return t if t > 0 else time.monotonic() + latency

