"""Reading recordings back: duration and the dominant frequency, second by second."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    import av

    chunks = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


def tone_fraction(path: Path, hz: float, tolerance: float = 5.0, *, start_s: float = 0.0,
                  end_s: float | None = None) -> tuple[float, float]:
    """(duration in s, fraction of 100 ms windows whose dominant frequency is ``hz``).

    ``start_s``/``end_s``: only the windows in that part of the recording count.
    """
    samples, rate = read_mono(path)
    window = rate // 10
    first = int(start_s * rate)
    last = samples.size if end_s is None else min(samples.size, int(end_s * rate))
    windows = [samples[i : i + window] for i in range(first, last - window + 1, window)]
    if not windows:
        return 0.0, 0.0
    hits = sum(
        1 for w in windows if np.abs(w).max() > 1000 and abs(dominant_hz(w, rate) - hz) <= tolerance
    )
    return samples.size / rate, hits / len(windows)
