#!/usr/bin/env python3
"""A third-party WebRTC peer for callctl: GStreamer's webrtcbin over plain HTTP (docs/API.md, "Your own peer").

Nothing of callctl is imported: this speaks the documented signaling API
with the standard library (urllib, a line-by-line Server-Sent Events reader)
and does its media with GStreamer (libnice ICE, its own DTLS/SRTP, Opus,
VP8).  It runs with the system Python and Debian's GStreamer
(``python3-gst-1.0 gstreamer1.0-plugins-bad gstreamer1.0-nice``)::

    gst_peer.py --server http://127.0.0.1:8765 --token T call bob [--video] [--seconds 5]
    gst_peer.py --server http://127.0.0.1:8765 --token T listen      # answers the first call

What it hears is reported as one JSON line per event on stdout:
``connected``, ``level`` (the peak of the peer's audio, dB), ``video``
(width, height of the peer's frames), ``ended``.  Exit 0 when the call
connected and ended normally.

Options for trying callctl's tolerance: ``--setup active|passive`` (the DTLS
role this peer takes when it answers), ``--strip ssrc|msid|mid`` (lines it
removes from its own SDP), ``--opus-fmtp`` (its Opus parameters).
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

DEVICE = "gst"


def say(event: str, **fields: object) -> None:
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}), flush=True)


class Api:
    """The signaling API: bearer token, JSON bodies, the device header."""

    def __init__(self, server: str, token: str) -> None:
        self.server, self.token = server.rstrip("/"), token

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "X-Callctl-Device": DEVICE})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"gst_peer: {method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from None

    def events(self, out: queue.Queue) -> None:
        """GET /v1/events, one (name, data) per event into ``out`` (a thread)."""
        req = urllib.request.Request(f"{self.server}/v1/events?device={DEVICE}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=3600) as resp:
            name, data = "", []
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if name:
                        out.put((name, json.loads("\n".join(data))))
                    name, data = "", []
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())


def edit_sdp(sdp: str, args: argparse.Namespace, answer: bool) -> str:
    """This peer's own SDP, edited the ways the options ask (to try callctl's tolerance)."""
    lines = []
    for line in sdp.splitlines():
        if "ssrc" in args.strip and line.startswith(("a=ssrc:", "a=ssrc-group:")):
            continue
        if "msid" in args.strip and line.startswith("a=msid"):
            continue
        if "mid" in args.strip and line.startswith("a=extmap:") and "sdes:mid" in line:
            continue
        if answer and args.setup and line.startswith("a=setup:"):
            line = f"a=setup:{args.setup}"
        if args.opus_fmtp and line.startswith("a=fmtp:") and _is_opus_fmtp(sdp, line):
            line = line.split(" ", 1)[0] + " " + args.opus_fmtp
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _is_opus_fmtp(sdp: str, line: str) -> bool:
    pt = line.split(":", 1)[1].split(" ", 1)[0]
    return re.search(rf"a=rtpmap:{pt} opus/", sdp, re.IGNORECASE) is not None


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.api = Api(args.server, args.token)
        self.loop = GLib.MainLoop()
        self.call_id: str | None = None
        self.connected = False
        self.gathered = threading.Event()
        self.code = 1
        self.frames = {"sent": 0, "received": 0}
        if args.cmd == "call":
            self.build(opus_pt=111, vp8_pt=120 if args.video else None)

    def build(self, opus_pt: int, vp8_pt: int | None) -> None:
        """Our media into webrtcbin; an answerer uses the offer's payload types, so its
        sending transceivers are the ones the offer's m-lines match (else it answers recvonly)."""
        args = self.args
        pipe = 'webrtcbin name=w bundle-policy=max-bundle stun-server="" '
        if not args.receive_only:
            pipe += (f"audiotestsrc is-live=true wave=sine freq={args.hz} volume=0.4 ! audioconvert ! "
                f"audioresample ! opusenc ! rtpopuspay name=opuspay pt={opus_pt} ! "
                f"application/x-rtp,media=audio,encoding-name=OPUS,payload={opus_pt} ! w. ")
        if vp8_pt is not None and not args.receive_only:
            pipe += (f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={args.width},height={args.height},"
                     f"framerate=15/1 ! videoconvert ! vp8enc deadline=1 ! rtpvp8pay pt={vp8_pt} ! "
                     f"application/x-rtp,media=video,encoding-name=VP8,payload={vp8_pt} ! w. ")
        element = Gst.parse_launch(pipe)
        if isinstance(element, Gst.Pipeline):
            self.pipe = element
        else:  # webrtcbin alone (--receive-only): into a pipeline of its own
            self.pipe = Gst.Pipeline.new("peer")
            self.pipe.add(element)
        self.w = self.pipe.get_by_name("w")
        pay = self.pipe.get_by_name("opuspay")
        if pay is not None:  # Opus packets we send (one 20 ms frame each)
            pay.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self.count, "sent")
        self.w.connect("pad-added", self.on_pad)
        self.w.connect("notify::ice-gathering-state", self.on_gathering)
        self.w.connect("notify::connection-state", self.on_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)

    # ------------------------------------------------------------ media
    def on_pad(self, _w: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded)
        self.pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded(self, _d: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps().to_string()
        if caps.startswith("audio"):
            chain = Gst.parse_bin_from_description(
                "audioconvert ! level interval=500000000 post-messages=true ! fakesink name=asink sync=false", True)
            sink = chain.get_by_name("asink")
            sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.count, "received")
        else:
            chain = Gst.parse_bin_from_description("videoconvert ! fakesink name=vsink sync=false", True)
            sink = chain.get_by_name("vsink")
            sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.on_frame, None)
        self.pipe.add(chain)
        chain.sync_state_with_parent()
        pad.link(chain.get_static_pad("sink"))

    def count(self, pad: Gst.Pad, info: Gst.PadProbeInfo, what: str) -> Gst.PadProbeReturn:
        self.frames[what] += 1
        return Gst.PadProbeReturn.OK

    def on_frame(self, pad: Gst.Pad, info: Gst.PadProbeInfo, _data: object) -> Gst.PadProbeReturn:
        s = pad.get_current_caps().get_structure(0)
        size = (s.get_value("width"), s.get_value("height"))
        if getattr(self, "_video_size", None) != size:
            self._video_size = size
            say("video", width=size[0], height=size[1])
        return Gst.PadProbeReturn.OK

    def on_message(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        if msg.type == Gst.MessageType.ELEMENT and msg.get_structure().get_name() == "level":
            peak = msg.get_structure().get_value("peak")
            say("level", peak_db=round(max(peak), 1))
        elif msg.type == Gst.MessageType.ERROR:
            err, _ = msg.parse_error()
            source = msg.src.get_name() if msg.src is not None else ""
            if source.startswith("sctp") and self.connected:
                # the data channel's association ended: a peer that hangs up aborts it (aiortc
                # does), a moment before its hangup reaches us through the server
                say("warning", message=f"{source}: {err}")
                return
            say("error", message=str(err))
            self.loop.quit()

    def on_state(self, *_a: object) -> None:
        state = self.w.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and not self.connected:
            self.connected = True
            say("connected", call_id=self.call_id)
            if self.args.seconds:
                GLib.timeout_add(int(self.args.seconds * 1000), self.hangup)
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            say("error", message="connection failed")
            self.loop.quit()

    def on_gathering(self, *_a: object) -> None:
        if self.w.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.gathered.set()

    # ------------------------------------------------------------ negotiation
    def local_sdp(self, answer: bool) -> str:
        """Non-trickle: the description once every candidate is in it."""
        self.gathered.wait(10)
        desc = self.w.get_property("local-description")
        sdp = edit_sdp(desc.sdp.as_text(), self.args, answer)
        if self.args.show_sdp:
            print(sdp, file=sys.stderr, flush=True)
        return sdp

    def set_local(self, kind: str, then: object) -> None:
        def created(promise: Gst.Promise, _d: object) -> None:
            reply = promise.get_reply()
            desc = reply.get_value(kind)
            # the edits go into what webrtcbin uses itself (a DTLS role it then takes), not
            # only into the text the peer sees
            edited = edit_sdp(desc.sdp.as_text(), self.args, answer=kind == "answer")
            _, message = GstSdp.SDPMessage.new_from_text(edited)
            desc = GstWebRTC.WebRTCSessionDescription.new(desc.type, message)
            self.w.emit("set-local-description", desc, None)
            threading.Thread(target=then, daemon=True).start()
        self.w.emit(f"create-{kind}", None, Gst.Promise.new_with_change_func(created, None))

    def set_remote(self, kind: GstWebRTC.WebRTCSDPType, sdp: str) -> None:
        _, message = GstSdp.SDPMessage.new_from_text(sdp)
        desc = GstWebRTC.WebRTCSessionDescription.new(kind, message)
        promise = Gst.Promise.new()
        self.w.emit("set-remote-description", desc, promise)
        promise.wait()

    def call(self) -> None:
        self.w.connect("on-negotiation-needed", lambda _w: self.set_local("offer", self._post_offer))
        self.pipe.set_state(Gst.State.PLAYING)

    def _post_offer(self) -> None:
        media = "video" if self.args.video else "audio"
        info = self.api.request("POST", "/v1/calls", {"to": self.args.peer, "media": media,
                                                      "sdp": self.local_sdp(answer=False)})
        self.call_id = info["call_id"]

    def listen(self) -> None:
        pass  # the pipeline is built when the offer is here (its payload types)

    def on_event(self, name: str, data: dict) -> bool:
        if name == "call.incoming" and self.call_id is None:
            self.call_id = data["call_id"]
            offer = data["sdp"]
            opus = re.search(r"a=rtpmap:(\d+) opus/48000", offer, re.IGNORECASE)
            vp8 = re.search(r"a=rtpmap:(\d+) VP8/90000", offer, re.IGNORECASE)
            self.build(int(opus[1]) if opus else 111,
                       int(vp8[1]) if vp8 and self.args.video else None)
            self.pipe.set_state(Gst.State.PLAYING)
            self.set_remote(GstWebRTC.WebRTCSDPType.OFFER, data["sdp"])
            self.set_local("answer", lambda: self.api.request(
                "POST", f"/v1/calls/{self.call_id}/answer", {"sdp": self.local_sdp(answer=True)}))
        elif name == "call.answered" and data.get("call_id") == self.call_id:
            self.set_remote(GstWebRTC.WebRTCSDPType.ANSWER, data["sdp"])
        elif name == "call.ended" and data.get("call_id") == self.call_id:
            say("ended", reason=data.get("reason"), audio_frames_sent=self.frames["sent"],
                audio_frames_received=self.frames["received"])
            self.code = 0 if self.connected else 1
            self.loop.quit()
        return False

    def hangup(self) -> bool:
        if self.call_id:
            self.api.request("POST", f"/v1/calls/{self.call_id}/hangup", {"reason": "hangup"})
        return False

    def run(self) -> int:
        events: queue.Queue = queue.Queue()
        threading.Thread(target=self.api.events, args=(events,), daemon=True).start()
        name, data = events.get(timeout=10)
        assert name == "registered", name
        say("registered", user=data["user"])

        def pump() -> bool:
            while not events.empty():
                self.on_event(*events.get())
            return True

        GLib.timeout_add(20, pump)
        if self.args.cmd == "call":
            self.call()
        else:
            self.listen()
        GLib.timeout_add(int(self.args.timeout * 1000), self.loop.quit)
        self.loop.run()
        if hasattr(self, "pipe"):
            self.pipe.set_state(Gst.State.NULL)
        return self.code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--hz", type=float, default=880.0, help="The tone this peer sends.")
    parser.add_argument("--video", action="store_true")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=0, help="Hang up this long after connecting.")
    parser.add_argument("--timeout", type=float, default=60, help="Give up after this long.")
    parser.add_argument("--setup", choices=["active", "passive"], help="The DTLS role when answering.")
    parser.add_argument("--strip", action="append", default=[], choices=["ssrc", "msid", "mid"])
    parser.add_argument("--receive-only", action="store_true",
                        help="listen: send nothing (the answer says recvonly).")
    parser.add_argument("--show-sdp", action="store_true", help="Print our SDP on stderr.")
    parser.add_argument("--opus-fmtp", help='e.g. "minptime=10;useinbandfec=1;stereo=1"')
    sub = parser.add_subparsers(dest="cmd", required=True)
    call = sub.add_parser("call")
    call.add_argument("peer")
    sub.add_parser("listen")
    args = parser.parse_args()
    Gst.init(None)
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
