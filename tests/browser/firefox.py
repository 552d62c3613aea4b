"""Debian's Firefox ESR driven over WebDriver BiDi, which Firefox speaks natively.

No driver to download (Playwright's Firefox is a patched build of its own): a
headless ``firefox-esr`` with a fresh profile opens a WebSocket, and a small
client over ``websockets`` sends it BiDi commands (navigate, evaluate script)
and collects the page's uncaught errors from ``log.entryAdded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
FIREFOX_HZ = 1000.0  # what Firefox's fake microphone plays (media.navigator.streams.fake)

# user.js of the fresh profile (the Remote Agent adds its own recommended
# automation prefs on top: no first-run pages, no updates, ...)
PREFS: dict[str, object] = {
    # fake microphone (a 1 kHz sine) and camera, no permission prompt
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    # audio plays and AudioContexts run without a user gesture
    "media.autoplay.default": 0,
    "media.autoplay.block-webaudio": False,
    # no sound card or sound server here: Firefox's mock audio device runs
    # AudioContexts and plays <audio> (without it they stay "suspended")
    "media.cubeb.force_mock_context": True,
    # the peer is on this machine: plain host candidates, loopback included
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.loopback": True,
    # nothing from the network but the page
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "app.normandy.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.aboutwelcome.enabled": False,
}


class PageError(AssertionError):
    pass


class Page:
    """One browsing context: script evaluation and polling, clicks and fills by data-testid."""

    def __init__(self, bidi: Bidi, context: str) -> None:
        self.bidi = bidi
        self.context = context

    async def goto(self, url: str) -> None:
        await self.bidi.send("browsingContext.navigate", {"context": self.context, "url": url,
                                                          "wait": "complete"})

    async def eval(self, expression: str, user_activation: bool = False) -> Any:
        """The JSON value of ``expression`` (awaited when it is a promise).

        ``user_activation``: run it as in a user's gesture (what a real click gives:
        permission requests, audio).
        """
        r = await self.bidi.send("script.evaluate", {
            "expression": f"(async () => JSON.stringify(await ({expression}) ?? null))()",
            "target": {"context": self.context}, "awaitPromise": True, "resultOwnership": "none",
            "userActivation": user_activation})
        if r["type"] == "exception":
            raise PageError(f"{expression}: {r['exceptionDetails'].get('text')}")
        return json.loads(r["result"]["value"])

    async def wait_for(self, expression: str, timeout: float = 20.0, describe: str = "") -> Any:
        """Poll ``expression`` until it is truthy (its value is returned) or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                extra = await self.eval(describe) if describe else None
                raise AssertionError(f"not within {timeout} s: {expression}; {extra}")
            await asyncio.sleep(0.05)

    def _el(self, test_id: str) -> str:
        return f"document.querySelector('[data-testid=\"{test_id}\"]')"

    async def click(self, test_id: str) -> None:
        await self.eval(f"{self._el(test_id)}.click()", user_activation=True)

    async def fill(self, test_id: str, value: str) -> None:
        await self.eval(f"(e => {{ e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input', {{bubbles: true}})) }})({self._el(test_id)})")

    async def text(self, test_id: str) -> str:
        return str(await self.eval(f"{self._el(test_id)}.textContent"))


class Bidi:
    """A WebDriver BiDi session over one WebSocket: commands by id, log entries collected."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self.pending:
                    fut = self.pending.pop(msg["id"])
                    if not fut.done():
                        fut.set_result(msg)
                elif msg.get("method") == "log.entryAdded":
                    self._log(msg["params"])
        except websockets.ConnectionClosed:
            pass
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("Firefox closed the BiDi connection"))

    def _log(self, entry: dict[str, Any]) -> None:
        text = entry.get("text") or ""
        print(f"page [{entry.get('type')}/{entry.get('level')}]:", text)
        if entry.get("type") == "javascript":  # an uncaught exception or rejection
            frames = (entry.get("stackTrace") or {}).get("callFrames") or []
            where = f" at {frames[0].get('url')}:{frames[0].get('lineNumber')}" if frames else ""
            self.errors.append(f"uncaught: {text}{where}")
        elif entry.get("type") == "console" and entry.get("level") == "error":
            self.errors.append(f"console.error: {text}")

    async def send(self, method: str, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        cid = next(self.ids)
        fut = self.pending[cid] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": cid, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, timeout)
        if msg.get("type") == "error":
            raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
        return dict(msg["result"])

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class FirefoxProcess:
    """A headless firefox-esr with a fresh temporary profile (one per test module: starting
    Firefox takes seconds); ``close`` kills it with its content processes and removes the profile."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="callctl-firefox-", ignore_cleanup_errors=True)
        profile = Path(self.dir.name, "profile")
        profile.mkdir()
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items()))
        self.log = Path(self.dir.name, "firefox.log")
        env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [FIREFOX, "--headless", "--no-remote", "--remote-debugging-port=0", "--profile", str(profile),
                 "about:blank"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def url(self, timeout: float) -> str:
        """The BiDi WebSocket's address, once Firefox printed it."""
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"WebDriver BiDi listening on (ws://\S+)", self.output())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("firefox-esr is not listening:\n" + self.output()[-4000:])
            await asyncio.sleep(0.05)
        return m.group(1)

    def close(self) -> None:
        # the profile is thrown away: no graceful shutdown (seconds), the whole
        # process group at once, Firefox's content processes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        print("firefox-esr:", self.output()[-4000:])  # shown when a test fails
        self.dir.cleanup()


class Firefox:
    """One BiDi session with a started Firefox, opened in the background (the test's other
    fixtures start meanwhile) and awaited by ``new_page``."""

    def __init__(self, process: FirefoxProcess, timeout: float) -> None:
        self.process = process
        self.bidi: Bidi | None = None
        self.pages: list[Page] = []
        self.ready = asyncio.create_task(self._start(timeout))

    async def _start(self, timeout: float) -> Bidi:
        url = await self.process.url(timeout)
        ws = await websockets.connect(url + "/session", max_size=None, open_timeout=timeout)
        self.bidi = Bidi(ws)
        await self.bidi.send("session.new", {"capabilities": {}}, timeout)
        await self.bidi.send("session.subscribe", {"events": ["log.entryAdded"]})
        return self.bidi

    @property
    def errors(self) -> list[str]:
        return self.bidi.errors if self.bidi else []

    async def new_page(self) -> Page:
        bidi = await self.ready
        r = await bidi.send("browsingContext.create", {"type": "tab"})
        self.pages.append(Page(bidi, r["context"]))
        return self.pages[-1]

    async def close(self) -> None:
        self.ready.cancel()
        with contextlib.suppress(BaseException):
            await self.ready
        if self.bidi is None:
            return
        with contextlib.suppress(Exception):
            for page in self.pages:  # its calls end with it
                await self.bidi.send("browsingContext.close", {"context": page.context}, 10)
            await self.bidi.send("session.end", {}, 10)
        await self.bidi.close()


@asynccontextmanager
async def session(process: FirefoxProcess, timeout: float = 30.0) -> AsyncIterator[Firefox]:
    """A BiDi session whose pages must not fail: afterwards it fails the test when a page
    it opened had an uncaught error (an exception, a rejected promise) or a console error."""
    firefox = Firefox(process, timeout)
    try:
        yield firefox
    finally:
        await firefox.close()
    if firefox.errors:
        pytest.fail("the page had script errors in Firefox:\n" + "\n".join(firefox.errors), pytrace=False)
