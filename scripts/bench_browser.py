"""Call set-up with a browser peer, against callctl <-> callctl, in one run.

Scenarios (each --runs times, medians):
  browser -> callctl   the page calls `callctl listen --auto-accept`
  callctl -> browser   `callctl call` rings the page, which answers at once
  callctl -> callctl   the same call between two callctl processes
Figures: dial -> connected (the caller's own measure) and the caller's time to
first remote audio.  Real Chromium (Debian's /usr/bin/chromium) driven by
Playwright, fake media devices; a local server; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required"]


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Proc:
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "callctl", *args, env=env,
                                                 stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.DEVNULL)
        return cls(p)

    async def until(self, name: str, timeout: float = 20) -> dict:
        assert self.proc.stdout is not None
        for e in self.events:
            if e.get("event") == name:
                return e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(self.proc.stdout.readline(), deadline - time.monotonic())
            if not line:
                break
            try:
                e = json.loads(line)
            except ValueError:
                if name in line.decode():
                    return {"line": line.decode()}
                continue
            self.events.append(e)
            if e.get("event") == name:
                return e
        raise RuntimeError(f"no {name}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from playwright.async_api import async_playwright

    results: dict[str, dict[str, list[float]]] = {}

    def note(scenario: str, metric: str, value: float | None) -> None:
        if value is not None:
            results.setdefault(scenario, {}).setdefault(metric, []).append(value)

    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        env = {**os.environ, "XDG_RUNTIME_DIR": tmp, "XDG_STATE_HOME": tmp,
               "CALLCTL_SECRET_FILE": f"{tmp}/secret"}
        server = await Proc.start("server", "--port", "0", "--log-level", "warning",
                                  "--secret-file", f"{tmp}/secret", env=env)
        procs: list[Proc] = [server]
        try:
            url = (await server.until("listening"))["line"].rsplit(" ", 1)[1].strip()
            env["CALLCTL_SERVER"] = url
            from callctl.signaling.auth import issue_token, read_secret

            secret = read_secret(Path(tmp) / "secret")
            common = ["--audio-in", "tone:440", "--audio-out", "null", "--video-out", "null"]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                context = await browser.new_context(permissions=["microphone", "camera"])
                page = await context.new_page()
                await page.goto(url + "/")
                await page.get_by_test_id("token").fill(issue_token(secret, "web", "default", 3600))
                await page.get_by_test_id("signin-button").click()
                await page.get_by_test_id("connection").get_by_text("online").wait_for()
                # the page answers every ring at once (as a kiosk would)
                await page.evaluate("""() => new MutationObserver(() => {
                    const r = document.getElementById('ringing');
                    if (!r.hidden) document.getElementById('accept').click();
                }).observe(document.getElementById('ringing'), {attributes: true})""")
                for run in range(args.runs):
                    # browser -> callctl
                    kiosk = await Proc.start("--json", "--as", "kiosk", "listen", "--auto-accept", "--once",
                                             "--device", f"k{run}", *common, env=env)
                    procs.append(kiosk)
                    await kiosk.until("registered")
                    await page.get_by_test_id("peer").fill("kiosk")
                    await page.get_by_test_id("call-button").click()
                    try:
                        await page.wait_for_function("() => { const c = window.callctl.state.call; return c && c.timeline.connected && c.timeline.firstAudio }", timeout=20000)
                    except Exception:
                        print("page:", await page.evaluate("() => ({call: window.callctl.state.call && {state: window.callctl.state.call.state, tl: window.callctl.state.call.timeline}, end: window.callctl.state.lastEnd, msg: document.getElementById('message').textContent})"), file=sys.stderr)
                        raise
                    tl = await page.evaluate("() => window.callctl.state.call.timeline")
                    if os.environ.get("BENCH_DEBUG"):
                        print({k: (v - tl["start"]) if v else v for k, v in tl.items()}, file=sys.stderr)
                    note("browser -> callctl", "dial -> connected ms", tl["connected"] - tl["start"])
                    note("browser -> callctl", "dial -> first remote audio ms", tl["firstAudio"] - tl["start"])
                    await page.get_by_test_id("hangup").click()
                    await kiosk.proc.wait()
                    # callctl -> browser
                    door = await Proc.start("--json", "--as", "door", "call", "web", "--device", f"d{run}",
                                            "--hangup-after", "1", *common, env=env)
                    procs.append(door)
                    connected = await door.until("call.connected")
                    outgoing = next(e for e in door.events if e["event"] == "call.outgoing")
                    flowing = await door.until("media.flowing")
                    note("callctl -> browser", "dial -> connected ms", connected["setup_ms"])
                    note("callctl -> browser", "dial -> first remote audio ms", (flowing["ts"] - outgoing["ts"]) * 1000)
                    await door.proc.wait()
                    # callctl -> callctl
                    bob = await Proc.start("--json", "--as", "bob", "listen", "--auto-accept", "--once",
                                           "--device", f"b{run}", *common, env=env)
                    procs.append(bob)
                    await bob.until("registered")
                    alice = await Proc.start("--json", "--as", "alice", "call", "bob", "--device", f"a{run}",
                                             "--hangup-after", "1", *common, env=env)
                    procs.append(alice)
                    connected = await alice.until("call.connected")
                    outgoing = next(e for e in alice.events if e["event"] == "call.outgoing")
                    flowing = await alice.until("media.flowing")
                    note("callctl -> callctl", "dial -> connected ms", connected["setup_ms"])
                    note("callctl -> callctl", "dial -> first remote audio ms", (flowing["ts"] - outgoing["ts"]) * 1000)
                    await alice.proc.wait()
                    await bob.proc.wait()
                await browser.close()
        finally:
            for p in procs:
                await p.stop()
    summary = {s: {m: round(statistics.median(v), 1) for m, v in ms.items()} for s, ms in results.items()}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"call set-up with a browser peer, medians of {args.runs} runs ({os.cpu_count()} CPUs)")
    print(f"{'scenario':<22} {'dial -> connected':>18} {'dial -> first audio':>20}")
    for scenario, m in summary.items():
        print(f"{scenario:<22} {m['dial -> connected ms']:>15.1f} ms {m['dial -> first remote audio ms']:>17.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
