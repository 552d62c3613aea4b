"""Real Chromium (Debian's package) driven by Playwright, with fake media devices."""

from __future__ import annotations

import math
import shutil
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.cli import Callctl
from tests.helpers import ServerProcess, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_HZ = 523.0  # what Chromium's fake microphone plays

playwright_api = pytest.importorskip("playwright.async_api")
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (scripts/setup installs it)", allow_module_level=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path, ["--ring-timeout", "30", "--heartbeat", "2", "--offline-grace", "5"])


@pytest.fixture
async def cli(server: ServerProcess, tmp_path: Path) -> AsyncIterator[Callctl]:
    runner = Callctl(server, tmp_path)
    yield runner
    await runner.close()


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    path = tmp_path / "browser-mic.wav"
    t = np.arange(48000 * 10)
    pcm = (np.sin(2 * math.pi * BROWSER_HZ * t / 48000) * 12000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture
async def browser(tone_wav: Path, tmp_path: Path) -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={tone_wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser, server: ServerProcess, token: str):  # type: ignore[no-untyped-def]
    context = await browser.new_context(permissions=["microphone", "camera"])
    page = await context.new_page()
    page.on("console", lambda m: print("page:", m.text))
    await page.goto(server.url + "/")
    await page.get_by_test_id("token").fill(token)
    await page.get_by_test_id("signin-button").click()
    return page
