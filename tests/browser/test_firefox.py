"""The softphone page in Firefox ESR (Debian's firefox-esr, over WebDriver BiDi) against callctl, both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.audio import tone_fraction
from tests.browser.figures import assert_mos_is_the_e_model_of
from tests.browser.firefox import FIREFOX, FIREFOX_HZ, Firefox, FirefoxProcess, Page, session
from tests.cli import Callctl
from tests.helpers import ServerProcess

if not Path(FIREFOX).exists():
    pytest.skip("firefox-esr is not installed (scripts/setup --test installs it)", allow_module_level=True)

WAIT_S = 20.0

STATE = """(() => { const s = window.callctl.state; const c = s.call;
    return {call: c && {state: c.state, answered: c.answered, mediaUp: c.mediaUp,
                        pc: c.pc && c.pc.connectionState, ice: c.pc && c.pc.iceConnectionState},
            lastEnd: s.lastEnd && {reason: s.lastEnd.reason, source: s.lastEnd.source},
            log: s.log, message: document.getElementById("message").textContent} })()"""


@pytest.fixture(scope="module")
def firefox_process() -> Iterator[FirefoxProcess]:
    process = FirefoxProcess()
    yield process
    process.close()


@pytest.fixture
async def firefox(firefox_process: FirefoxProcess) -> AsyncIterator[Firefox]:
    """A fresh BiDi session and tabs per test; the test fails on any uncaught page error."""
    async with session(firefox_process) as ff:
        yield ff


async def open_page(firefox: Firefox, server: ServerProcess, user: str) -> Page:
    page = await firefox.new_page()
    await page.goto(server.url + "/")
    await page.fill("token", server.token(user))
    await page.click("signin-button")
    await page.wait_for("document.getElementById('connection').textContent === 'online'", WAIT_S, STATE)
    assert await page.text("identity") == user
    return page


async def call_state(page: Page, value: str) -> None:
    await page.wait_for(f"(window.callctl.state.call && window.callctl.state.call.state) === {value!r}", WAIT_S, STATE)


async def hears(page: Page, hz: float) -> None:
    await page.wait_for(f"(f => f !== null && Math.abs(f - {hz}) < 15)(window.callctl.remoteDominantHz())", WAIT_S, STATE)


async def ended(page: Page) -> dict:
    return dict(await page.wait_for("window.callctl.state.call === null && window.callctl.state.lastEnd", WAIT_S, STATE))


@pytest.mark.alone  # the browser's jitter buffer (and so its MOS) grows on a machine that lags
async def test_firefox_calls_a_listening_kiosk(firefox: Firefox, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:
    rec = tmp_path / "kiosk.wav"
    kiosk = await cli.listen("kiosk", "--auto-accept", "--once", "--record", str(rec),
                             "--video-in", "testsrc", "--video-size", "320x240", "--video-out", "null")
    page = await open_page(firefox, server, "operator")
    await page.fill("peer", "kiosk")
    await page.eval("document.getElementById('with-video').checked = true")
    await page.click("call-button")
    await call_state(page, "connected")
    await kiosk.wait_event("call.connected")
    # Firefox hears the kiosk's 660 Hz tone and decodes its 320x240 video
    await hears(page, 660)
    await page.wait_for("window.callctl.stats().then(s => s && s.in_video && s.in_video.frames > 10 && s.in_video.width === 320)",
                        WAIT_S, "window.callctl.stats()")
    # the call's figures on the page, from Firefox's own getStats()
    figures = await page.wait_for("window.callctl.callStats()", WAIT_S, "window.callctl.callStats()")
    assert figures["loss_in_pct"] == 0 and figures["packets_received"] > 100, figures
    assert 20 < figures["kbps_in"] < 60, figures
    assert_mos_is_the_e_model_of(figures)
    assert "MOS" in await page.text("call-stats")
    # callctl decodes Firefox's camera
    flowing = await kiosk.wait_event("video.flowing")
    assert flowing["width"] > 0 and flowing["height"] > 0
    await kiosk.wait_event("media.level", count=6)  # 3 s of call for the recording
    # mute and video pause cross (Firefox's replaceTrack(null) for the pause)
    await page.click("mute")
    await kiosk.wait_event("peer.muted")
    await page.click("mute")
    await kiosk.wait_event("peer.unmuted")
    await page.click("video-toggle")
    await kiosk.wait_event("peer.video.paused")
    await page.click("hangup")
    assert await kiosk.exit_code() == 0, (kiosk.events[-3:], await page.eval(STATE))
    end = kiosk.named("call.ended")[0]
    assert (end["reason"], end["source"]) == ("hangup", "remote")
    last = await ended(page)
    assert (last["reason"], last["source"]) == ("hangup", "local")
    # the kiosk recorded Firefox's fake microphone (a 1 kHz sine)
    duration, fraction = tone_fraction(rec, FIREFOX_HZ)
    assert duration > 2 and fraction > 0.6, (duration, fraction)  # mute took a moment out of it


async def test_callctl_calls_firefox_which_answers(firefox: Firefox, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:
    rec = tmp_path / "door.wav"
    page = await open_page(firefox, server, "reception")
    door = await cli.call("door", "reception", "--record", str(rec))
    await page.wait_for("!document.querySelector('[data-testid=ringing]').hidden", WAIT_S, STATE)
    assert "door" in await page.text("ringing")
    await page.click("accept")
    await door.wait_event("call.connected")
    await call_state(page, "connected")
    await hears(page, 440)
    await door.wait_event("media.flowing")
    await door.wait_event("media.level", count=6)
    code, _, err = await cli.run("door", "hangup")
    assert code == 0, err
    assert await door.exit_code() == 0
    end = door.named("call.ended")[0]
    assert (end["reason"], end["source"]) == ("hangup", "local")
    last = await ended(page)
    assert (last["reason"], last["source"]) == ("hangup", "remote")
    assert "the call was hung up (by door)" in await page.text("message")
    # what the caller recorded is the answering Firefox's microphone
    duration, fraction = tone_fraction(rec, FIREFOX_HZ)
    assert duration > 2 and fraction > 0.8, (duration, fraction)
