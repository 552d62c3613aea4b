"""Real Chromium (Debian's package) driven by Playwright, with fake media devices."""

from __future__ import annotations

import math
import shutil
import wave
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.cli import Callctl
from tests.helpers import ServerProcess, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_HZ = 523.0  # what Chromium's fake microphone plays
# a name that is not localhost for the server's 127.0.0.1: plain http there is
# not a secure context (no microphone), as for a phone on the LAN
ELSEWHERE = "callctl.test"

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


# the script errors of the pages each browser opened (open_page/new_page record them)
_page_errors: weakref.WeakKeyDictionary[object, list[str]] = weakref.WeakKeyDictionary()

# console errors that are not the page's script failing: a refused request (a bad
# token's 401) is logged by the browser itself
NOT_SCRIPT_ERRORS = ("Failed to load resource",)


def chromium_args(tone_wav: Path, *extra: str) -> list[str]:
    return [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={tone_wav}",
        "--autoplay-policy=no-user-gesture-required",
        f"--host-resolver-rules=MAP {ELSEWHERE} 127.0.0.1",
        *extra,
    ]


def watch_errors(page, errors: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Record the page's uncaught exceptions (and rejections) and console errors in ``errors``."""
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

    def console(m) -> None:  # type: ignore[no-untyped-def]
        print("page:", m.text)
        if m.type == "error" and not m.text.startswith(NOT_SCRIPT_ERRORS):
            errors.append(f"console.error: {m.text}")
    page.on("console", console)


@asynccontextmanager
async def launched(*args: str) -> AsyncIterator[object]:
    """A headless Chromium whose pages must not fail: its teardown fails the test on any page error."""
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(args))
        errors = _page_errors[b] = []
        try:
            yield b
        finally:
            await b.close()
        if errors:
            pytest.fail("the page had script errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
async def browser(tone_wav: Path, tmp_path: Path) -> AsyncIterator[object]:
    async with launched(*chromium_args(tone_wav)) as b:
        yield b


async def new_page(browser, viewport: dict[str, int] | None = None,  # type: ignore[no-untyped-def]
                   permissions: tuple[str, ...] = ("microphone", "camera")):
    """A fresh context's page, with microphone and camera allowed and its errors watched."""
    context = await browser.new_context(permissions=list(permissions), viewport=viewport)
    page = await context.new_page()
    watch_errors(page, _page_errors.setdefault(browser, []))
    return page


async def open_page(browser, server: ServerProcess, token: str,  # type: ignore[no-untyped-def]
                    viewport: dict[str, int] | None = None, permissions: tuple[str, ...] = ("microphone", "camera"),
                    url: str | None = None):
    page = await new_page(browser, viewport, permissions)
    await page.goto(url or server.url + "/")
    await page.get_by_test_id("token").fill(token)
    await page.get_by_test_id("signin-button").click()
    return page
