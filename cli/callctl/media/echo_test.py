"""``callctl preview --audio --echo-test``: how a kiosk's speaker reaches its microphone, over SSH.

It listens to the room for a second (its noise), then plays a test signal on
the speaker — bursts of noise shaped like speech, the kind of sound the echo
canceller must learn from — through the same microphone path a call uses
(``echo.link``: the speaker's frames as the reference, AEC3 on the
microphone).  The processing thread hands over each captured frame, the far
end paired with it and the processed frame (``Processor.tap``); from them:

* the **echo delay**: how long after the speaker played a sound (as its
  driver times it) the microphone hears it — the peak of the cross-correlation;
* the **echo return loss** (ERL): how far below the played signal the echo
  arrives at the microphone;
* the **echo reduction** (ERLE): the echo's power at the microphone over what
  is left after the canceller, from 2 s on (it has converged by then).

A microphone that does not hear the speaker (nothing correlates, or the echo
is not above the room's noise) is said to, and there is nothing to cancel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from callctl.media.audio import FRAME, RATE

#: The canceller is given this long before its reduction is measured.
SETTLE_S = 2.0
#: The echo reduction is averaged over windows this long.
ERLE_WINDOW_S = 0.1
#: The longest echo delay looked for.
MAX_DELAY_S = 0.6


def probe_signal(seconds: float, seed: int = 3) -> np.ndarray:
    """Speech-shaped noise: 300 ms bursts, 200 ms pauses, pinkish, -20 dBFS RMS while on."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    white = rng.standard_normal(n)
    # a gentle low-pass: more energy where speech has it
    pink = np.convolve(white, np.ones(6) / 6, mode="same")
    gate = (np.arange(n) % int(0.5 * RATE)) < int(0.3 * RATE)
    ramp = np.convolve(gate.astype(float), np.ones(240) / 240, mode="same")  # 5 ms edges
    signal = pink * ramp
    signal *= 32768 * 10 ** (-20 / 20) / max(float(np.sqrt((signal[gate] ** 2).mean())), 1e-9)
    return np.clip(signal, -32768, 32767).astype(np.int16)


@dataclass
class EchoReport:
    noise_dbfs: float
    played_dbfs: float
    #: None: the microphone does not hear the speaker.
    delay_ms: float | None
    erl_db: float | None
    erle_db: float | None

    @property
    def heard(self) -> bool:
        return self.delay_ms is not None

    def verdict(self) -> str:
        if not self.heard:
            return ("the microphone does not hear the speaker: nothing to cancel "
                    "(is the speaker muted, or far from the microphone?)")
        assert self.erle_db is not None
        if self.erle_db >= 25:
            return "good: the far end will not hear itself"
        if self.erle_db >= 15:
            return "fair: the far end may hear a faint echo of itself"
        return "poor: the far end will hear itself (is the speaker distorting, or turned up to clipping?)"

    def lines(self) -> list[tuple[str, str]]:
        rows = [("room noise", f"{self.noise_dbfs:.1f} dBFS"), ("test signal", f"{self.played_dbfs:.1f} dBFS")]
        if self.heard:
            rows += [("echo delay", f"{self.delay_ms:.0f} ms after the speaker played it"),
                     ("echo return loss", f"{self.erl_db:.1f} dB below what was played"),
                     ("echo reduction", f"{self.erle_db:.1f} dB (echo cancellation, from {SETTLE_S:g} s on)")]
        rows.append(("verdict", self.verdict()))
        return rows

    def as_dict(self) -> dict[str, object]:
        return {"noise_dbfs": round(self.noise_dbfs, 1), "played_dbfs": round(self.played_dbfs, 1),
                "heard": self.heard, "delay_ms": None if self.delay_ms is None else round(self.delay_ms),
                "erl_db": None if self.erl_db is None else round(self.erl_db, 1),
                "erle_db": None if self.erle_db is None else round(self.erle_db, 1),
                "verdict": self.verdict()}


def _dbfs(power: float) -> float:
    return 10 * math.log10(max(power, 1e-3) / 32768.0 ** 2)


def measure(mic: np.ndarray, far: np.ndarray, out: np.ndarray, noise_power: float) -> EchoReport:
    """The figures from what the microphone captured, the far end paired with it, the result."""
    mic, far, out = (x.astype(np.float64) for x in (mic, far, out))
    played = far != 0
    played_power = float((far[played] ** 2).mean()) if played.any() else 0.0
    report = EchoReport(_dbfs(noise_power), _dbfs(played_power), None, None, None)
    max_lag = int(MAX_DELAY_S * RATE)
    if far.size < max_lag + RATE or not played.any():
        return report
    size = 1 << math.ceil(math.log2(mic.size + far.size))
    corr = np.fft.irfft(np.fft.rfft(mic, size) * np.conj(np.fft.rfft(far, size)), size)[:max_lag]
    lag = int(np.argmax(np.abs(corr)))
    norm = math.sqrt(float((mic ** 2).sum()) * float((far ** 2).sum())) or 1.0
    shifted = np.zeros_like(far)
    shifted[lag:] = far[: far.size - lag]
    playing = shifted != 0
    settle = int(SETTLE_S * RATE)
    playing[:settle] = False
    echo_power = float((mic[playing] ** 2).mean()) if playing.any() else 0.0
    # heard: a clear correlation peak, and an echo at least 6 dB above the room's noise
    if abs(corr[lag]) / norm < 0.05 or echo_power < 4 * max(noise_power, 1.0):
        return report
    report.delay_ms = lag * 1000 / RATE
    report.erl_db = 10 * math.log10(played_power / max(echo_power - noise_power, 1e-3))
    report.erle_db = _mean_erle_db(mic, out, playing)
    return report


def _mean_erle_db(mic: np.ndarray, out: np.ndarray, playing: np.ndarray) -> float:
    """The echo reduction averaged over time: the mean, in dB, of each ERLE_WINDOW_S window
    of echo, so that a moment the canceller loses the echo's delay (a late callback on a busy
    machine) weighs as long as it lasted, not as loud as it was."""
    n = int(ERLE_WINDOW_S * RATE)
    windows: list[slice | np.ndarray] = [slice(i, i + n) for i in range(0, mic.size - n + 1, n)
                                         if playing[i:i + n].all()]
    if not windows:  # no whole window of echo: over what there is
        windows = [playing]
    return float(np.mean([10 * math.log10(float((mic[w] ** 2).mean()) / max(float((out[w] ** 2).mean()), 1e-3))
                          for w in windows]))


def run(mic_name: str | None, speaker_name: str | None, seconds: float) -> EchoReport:
    """Open the devices, listen, play the test signal, measure (blocks for ~``seconds`` + 1.5 s)."""
    from callctl.media import echo
    from callctl.media.devices import MicSource, SpeakerSink

    mic = MicSource(mic_name)
    try:
        speaker = SpeakerSink(speaker_name)
    except BaseException:
        mic.close()
        raise
    captured: list[np.ndarray] = []
    paired: list[np.ndarray] = []
    processed: list[np.ndarray] = []

    def tap(pcm: np.ndarray, far: np.ndarray | None, out: np.ndarray) -> None:
        captured.append(pcm.copy())
        paired.append(far.copy() if far is not None else np.zeros_like(pcm))
        processed.append(out.copy())

    try:
        on = echo.link(mic, speaker, echo.Processing(aec=True, noise_suppression=False, agc=False))
        if not on.aec or mic.processor is None:
            raise RuntimeError(echo.available() or "echo cancellation could not be set up")
        mic.processor.tap = tap
        signal = probe_signal(seconds)
        start = time.monotonic()
        # a second of the room alone, then the signal; frames written as the speaker takes them
        total = int(1.0 * RATE / FRAME) + signal.size // FRAME + int(MAX_DELAY_S * RATE / FRAME) + 5
        for n in range(total):
            i = n - int(1.0 * RATE / FRAME)
            frame = signal[i * FRAME:(i + 1) * FRAME] if 0 <= i < signal.size // FRAME else None
            speaker.write(frame if frame is not None else np.zeros(FRAME, np.int16))
            time.sleep(max(0.0, start + (n + 1) * FRAME / RATE - time.monotonic()))
            mic.flush()  # what a call would have sent: not needed here
        mic.processor.tap = None
    finally:
        mic.close()
        speaker.close()
    mic_all, far_all, out_all = (np.concatenate(x) if x else np.zeros(0, np.int16)
                                 for x in (captured, paired, processed))
    quiet = int(0.8 * RATE)
    noise_power = float((mic_all[:quiet].astype(np.float64) ** 2).mean()) if mic_all.size > quiet else 0.0
    return measure(mic_all, far_all, out_all, noise_power)
