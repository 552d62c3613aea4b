"""Property-based tests of what callctl parses from strangers: SDPs, control lines, config, specs.

Whatever the input, each parser either accepts it or raises its one documented
error; nothing else escapes (no AssertionError, RecursionError, ValueError...).
``CALLCTL_FUZZ_EXAMPLES`` sets the examples per property (``scripts/fuzz-api``).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callctl.config import ConfigError, check_server_url, load_file
from callctl.engine.control import MAX_LINE, Request, parse_request
from callctl.media.errors import BadSdp, DeviceError, MediaError
from callctl.media.registry import AUDIO_SINKS, AUDIO_SOURCES, VIDEO_SINKS, VIDEO_SOURCES
from callctl.media.sdp import check_sdp

EXAMPLES = int(os.environ.get("CALLCTL_FUZZ_EXAMPLES", "200"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SDP_LINES = st.sampled_from([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "c=IN IP4 0.0.0.0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96", "m=application 9 UDP/DTLS/SCTP webrtc",
    "m=audio 0 RTP/AVP 0", "m=audio x y z", "m=audio 9 UDP/TLS/RTP/SAVPF 300",
    "a=rtpmap:111 opus/48000/2", "a=rtpmap:96 VP8/90000", "a=rtpmap:111", "a=fmtp:111 useinbandfec=1",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuv", "a=fingerprint:sha-256 AB:CD",
    "a=fingerprint:nonsense", "a=setup:actpass", "a=setup:sideways", "a=mid:0", "a=sendrecv",
    "a=candidate:1 1 udp 1 127.0.0.1 9 typ host", "a=candidate:garbage", "a=extmap:1 urn:x",
    "a=extmap:x/y/z", "a=ssrc:1 cname:x", "a=ssrc:x", "a=group:BUNDLE 0 1", "a=rtcp-mux",
])


@fuzz
@given(st.lists(SDP_LINES, max_size=30), st.sampled_from(["\r\n", "\n"]))
def test_check_sdp_accepts_or_raises_bad_sdp(lines: list[str], newline: str) -> None:
    try:
        check_sdp(newline.join(lines) + newline)
    except BadSdp as exc:
        assert str(exc)


@fuzz
@given(st.text(max_size=2000))
def test_check_sdp_on_any_text(text: str) -> None:
    try:
        check_sdp(text)
    except BadSdp:
        pass


@fuzz
@given(st.binary(max_size=MAX_LINE + 100))
def test_a_control_line_is_a_request_or_an_error_message(line: bytes) -> None:
    answer = parse_request(line)
    assert isinstance(answer, Request | str)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@fuzz
@given(st.dictionaries(st.sampled_from(["cmd", "call_id", "arg", "x"]), JSONISH, max_size=4))
def test_control_requests_of_any_shape(obj: dict) -> None:  # type: ignore[type-arg]
    import json

    answer = parse_request(json.dumps(obj).encode())
    if isinstance(answer, Request):
        assert isinstance(answer.cmd, str) and answer.cmd == obj["cmd"]


@fuzz
@given(st.binary(max_size=3000))
def test_any_config_file_loads_or_is_one_config_error(tmp_path_factory, content: bytes) -> None:  # type: ignore[no-untyped-def]
    path = Path(tmp_path_factory.mktemp("config")) / "config.toml"
    path.write_bytes(content)
    try:
        assert isinstance(load_file(path, explicit=True), dict)
    except ConfigError as exc:
        assert str(path) in str(exc)


@fuzz
@given(st.text(max_size=80))
def test_any_server_url_is_accepted_or_one_config_error(url: str) -> None:
    try:
        check_server_url(url)
    except ConfigError as exc:
        assert "bad server URL" in str(exc)


SPEC_KINDS = st.sampled_from(["tone", "silence", "file", "mic", "null", "speaker", "camera", "testsrc",
                              "terminal", "TONE", "", ":", "x"])


@fuzz
@given(SPEC_KINDS, st.one_of(st.none(), st.text(max_size=30)))
def test_every_spec_checks_or_raises_a_media_or_device_error(kind: str, arg: str | None) -> None:
    spec = kind if arg is None else f"{kind}:{arg}"
    for registry in (AUDIO_SOURCES, AUDIO_SINKS, VIDEO_SOURCES, VIDEO_SINKS):
        try:
            registry.check(spec)
        except (MediaError, DeviceError) as exc:
            assert str(exc)
