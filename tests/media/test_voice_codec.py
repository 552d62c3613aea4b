"""Our Opus encoder and audio-level hook, checked with the real codec."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from callctl.media import adjust, voice
from callctl.media.errors import UnsupportedStack
from callctl.media.audio import FRAME, RATE, ToneSource


def frames(n: int, layout: str = "mono") -> list[av.AudioFrame]:
    src = ToneSource(440, amplitude=0.3)
    out = []
    for i in range(n):
        pcm = src.read()
        if layout == "stereo":
            pcm = np.repeat(pcm, 2)
        f = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
        f.sample_rate, f.pts, f.time_base = RATE, i * FRAME, fractions.Fraction(1, RATE)
        out.append(f)
    return out


def test_voice_encoder_is_mono_at_voice_bitrate_and_decodes_to_the_tone() -> None:
    adjust.tune_aiortc()
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.jitterbuffer import JitterFrame

    encoder = voice.voice_encoder()
    packets: list[bytes] = []
    for f in frames(150):  # 3 s
        payloads, _ = encoder.encode(f)
        packets += payloads
    assert packets
    assert all(p[0] & 0x04 == 0 for p in packets)  # Opus TOC stereo flag clear: mono
    kbps = sum(len(p) for p in packets) * 8 / 3 / 1000
    assert 20 < kbps < 45, kbps  # aiortc's stock encoder sends ~96 kbit/s stereo

    decoder = OpusDecoder()  # a standard peer's decoder (stereo output)
    pcm = np.concatenate([
        d.to_ndarray().reshape(-1)[0::2]
        for i, p in enumerate(packets)
        for d in decoder.decode(JitterFrame(data=p, timestamp=i * FRAME))
    ])[RATE // 2:]
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    assert abs(np.fft.rfftfreq(pcm.size, 1 / RATE)[spectrum.argmax()] - 440) < 3


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_fast_audio_level_matches_the_definition(layout: str) -> None:
    for f in frames(3, layout):
        pcm = f.to_ndarray().astype(np.float64).reshape(-1)
        expected = round(-10 * np.log10(np.mean(pcm**2) / 32767.0**2))
        assert abs(voice.dbov(f) - expected) <= 1
    silent = av.AudioFrame.from_ndarray(np.zeros((1, FRAME), np.int16), format="s16", layout="mono")
    assert voice.dbov(silent) == 127


def _bitrate_kbps(settings: voice.VoiceSettings | None) -> float:
    encoder = voice.voice_encoder(settings)
    size = 0
    for f in frames(150):  # 3 s
        payloads, _ = encoder.encode(f)
        size += sum(len(p) for p in payloads)
    return size * 8 / 3 / 1000


def test_each_call_encodes_at_its_own_bitrate_through_the_context() -> None:
    adjust.tune_aiortc()
    with voice.voice_settings(voice.VoiceSettings(bitrate=12000)):
        low = _bitrate_kbps(None)  # what aiortc's get_encoder hook gets inside a call's context
    high = _bitrate_kbps(voice.VoiceSettings(bitrate=64000))
    assert low < 20 < 40 < high
    assert voice.current_voice() == voice.VoiceSettings()  # the context was restored


def test_fec_plan_goes_up_at_once_and_down_a_step_after_five_reports() -> None:
    plan = voice.LossPlan()
    assert plan.pct == 0
    assert not plan.report(0)  # a clean link: no FEC
    assert plan.report(3) and plan.pct == 5  # 3/256 = 1.2 % lost: the first step up
    assert plan.report(40) and plan.pct == 20  # 15.6 %
    assert plan.report(255) and plan.pct == 30  # the highest step covers anything above
    for _ in range(voice.STEP_DOWN_AFTER - 1):
        assert not plan.report(0) and plan.pct == 30
    assert plan.report(0) and plan.pct == 20  # one step down, not to none
    for _ in range(3):
        plan.report(0)
    assert not plan.report(25) and plan.pct == 20  # 9.8 %: below the plan, but a loss: counts on
    assert plan.report(0) and plan.pct == 10
    assert not plan.report(25) and plan.pct == 10  # asks for what is planned: the count restarts
    for _ in range(voice.STEP_DOWN_AFTER - 1):
        plan.report(0)
    assert plan.pct == 10
    fixed = voice.LossPlan(fixed=10)
    assert not fixed.report(255) and not fixed.report(0) and fixed.pct == 10


def _decoded(packets: list[bytes]) -> np.ndarray:
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.jitterbuffer import JitterFrame

    decoder = OpusDecoder()  # a standard peer's decoder (stereo output)
    return np.concatenate([
        d.to_ndarray().reshape(-1)[0::2]
        for i, p in enumerate(packets)
        for d in decoder.decode(JitterFrame(data=p, timestamp=i * FRAME))
    ])


def _peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / RATE)[spectrum.argmax()])


def test_the_encoder_replanned_mid_stream_goes_on_where_it_stopped() -> None:
    adjust.tune_aiortc()
    encoder = voice.voice_encoder()
    packets, stamps = [], []
    for i, f in enumerate(frames(100)):
        if i == 50:
            encoder.note_loss(25)  # the peer reports 9.8 % lost: a new codec, planned for it
            assert encoder.plan.pct == 10
        payloads, ts = encoder.encode(f)
        packets += payloads
        stamps.append(ts)
    assert stamps == [i * FRAME for i in range(100)]  # one packet a frame, no jump at the switch
    assert all(p[0] & 0x04 == 0 for p in packets)  # mono on both sides of it
    pcm = _decoded(packets)
    assert abs(_peak_hz(pcm[RATE // 2: RATE]) - 440) < 3
    assert abs(_peak_hz(pcm[RATE + RATE // 10:]) - 440) < 3


def test_frames_that_are_not_20_ms_of_48_khz_mono_are_resampled_first() -> None:
    adjust.tune_aiortc()
    encoder = voice.voice_encoder()
    packets, stamps = [], []
    for f in frames(100, layout="stereo"):  # 10 ms at a time would be rebuffered the same way
        payloads, ts = encoder.encode(f)
        packets += payloads
        stamps.append(ts)
    assert encoder.resampler is not None
    assert stamps == [i * FRAME for i in range(100)]
    assert all(p[0] & 0x04 == 0 for p in packets)  # sent as mono
    assert abs(_peak_hz(_decoded(packets)[RATE // 2:]) - 440) < 3
    half = voice.voice_encoder()
    out = []
    for f in frames(20):  # 20 ms frames cut into 10 ms ones: a packet every second frame
        pcm = f.to_ndarray()
        for k in range(2):
            g = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, k * FRAME // 2:(k + 1) * FRAME // 2]),
                                           format="s16", layout="mono")
            g.sample_rate, g.pts, g.time_base = RATE, f.pts + k * FRAME // 2, f.time_base
            out.append(half.encode(g))
    assert [len(p) for p, _ in out] == [0, 1] * 20
    assert [ts for _, ts in out[1::2]] == [i * FRAME for i in range(20)]


def test_the_installed_aiortc_is_the_verified_one() -> None:
    adjust.check_versions()  # raises UnsupportedStack otherwise


@pytest.mark.parametrize("versions", [
    {"aiortc": (1, 17, 0), "aioice": (0, 13, 0)},
    {"aiortc": (1, 9, 2), "aioice": (0, 13, 0)},
    {"aiortc": (1, 16, 0), "aioice": (0, 10, 1)},
])
def test_an_unverified_aiortc_is_refused_in_one_line(versions: dict[str, tuple[int, ...]]) -> None:
    with pytest.raises(UnsupportedStack) as info:
        adjust.verify_versions(versions)
    assert "\n" not in str(info.value) and "verified with aiortc 1.16.x, aioice 0.13.x" in str(info.value)


async def test_audio_is_coded_on_the_event_loop_and_video_keeps_its_thread(tmp_path: Path) -> None:
    """Real peers over the loopback relay: the tone arrives with no audio coding thread at all."""
    import threading

    from callctl.harness.relay import LossyLink
    from callctl.media.audio import FileSink, SilenceSource
    from tests.audio import tone_fraction
    from tests.media.test_lossy_link import connected_pair

    adjust.tune_aiortc()
    rec = tmp_path / "far.wav"
    link = await LossyLink().start()
    a, b = await connected_pair(link, SilenceSource(), [FileSink(rec)], ToneSource(660), [])
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while a.playout.stats.played < 100 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)  # 2 s of audio played at a
        names = [t.name for t in threading.enumerate()]
        played = a.playout.stats.played
    finally:
        await a.close()
        await b.close()
        link.close()
    assert played >= 100, played
    assert "audio-decoder" not in names, names
    assert "video-decoder" in names, names  # the call's video receiver, idle, keeps aiortc's thread
    _, fraction = tone_fraction(rec, 660, tolerance=15, start_s=0.5)
    assert fraction > 0.9, fraction
