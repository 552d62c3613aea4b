// callctl softphone: the same /v1 API as the CLI, in a page (no build step, no CDN).
"use strict";

const REASONS = {
  hangup: "the call was hung up",
  declined: "the call was declined",
  busy: "busy: they are in another call",
  no_answer: "no answer",
  cancelled: "the caller hung up before it was answered",
  unavailable: "not available (unknown user, or not online)",
  answered_elsewhere: "answered on another device",
  network_lost: "the connection was lost",
  server_unreachable: "the server could not be reached",
  auth_failed: "not allowed: the token was refused",
  device_error: "a microphone or camera could not be opened",
  max_duration: "the call reached its maximum length",
  bad_sdp: "the other side's call set-up was unusable",
  internal_error: "something went wrong",
};
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const state = {
  token: null,
  me: null,
  device: null,
  iceServers: [],
  iceExpiresAt: null,
  // ?relay-only: media only through the TURN relay (as callctl's --relay-only)
  relayOnly: new URLSearchParams(location.search).has("relay-only"),
  events: null,
  lastEventId: null,
  online: false,
  backoff: 250,
  call: null,
  lastEnd: null,       // {reason, source} of the last call, for tests and the message line
  log: [],             // event names seen, for tests
  // the microphone needs a secure context (https, or http on localhost)
  mediaBlocked: !window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia,
  ringing: null,       // {kind: "ring"|"ringback", call_id, title, notified} while a ring plays
  early: [],           // events of a call we placed whose id the POST has not told us yet
  messages: [],        // messages the peer sent, {type, body}, for tests
  // the door button: ?door=dtmf:9# | text:open | json:{"action":"open"} (default), ?door-label=Unlock
  door: parseDoor(new URLSearchParams(location.search)),
};
const TITLE = document.title;
const MAX_MESSAGE_BYTES = 16384;  // as callctl's: the whole JSON text of one message

function parseDoor(params) {
  const spec = params.get("door") || 'json:{"action":"open-door"}';
  const at = spec.indexOf(":");
  const kind = at < 0 ? "text" : spec.slice(0, at);
  const value = at < 0 ? spec : spec.slice(at + 1);
  const label = params.get("door-label") || "Open door";
  if (kind === "dtmf") return { kind, value, label };
  if (kind === "json") {
    try { return { kind, value: JSON.parse(value), label }; } catch (e) { return { kind: "text", value, label }; }
  }
  return { kind: "text", value, label };
}
// why there is no microphone, and what to do: [text, is-code] parts
const INSECURE_PARTS = [
  ["This page cannot use the microphone: browsers allow it only over HTTPS or on localhost, "
    + "and this page was opened over plain http from " + location.host + ". Serve it with "],
  ["callctl server --tls self-signed", true],
  [" and open "], ["https://" + location.host + "/", true],
  [" (accept the certificate warning once), or open it as "],
  ["http://localhost:" + (location.port || "80") + "/", true],
  [" on the server's own machine. Calling is off until then."],
];
const INSECURE = INSECURE_PARTS.map(([t]) => t).join("");

// ------------------------------------------------------------------ helpers

function deviceId() {
  let id = localStorage.getItem("callctl.device");
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 10);
    localStorage.setItem("callctl.device", id);
  }
  return id;
}

function say(text, error = false) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "error" : "";
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (e) {
    return null;
  }
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: {
      "Authorization": "Bearer " + state.token,
      "X-Callctl-Device": state.device,
      "Content-Type": "application/json",
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (e) { /* empty */ }
  if (!res.ok) {
    const err = new Error((data && data.message) || ("HTTP " + res.status));
    err.status = res.status;
    err.code = data && data.error;
    throw err;
  }
  return data;
}

// ----------------------------------------------------------- sign-in, stream

async function signIn(token) {
  token = token.trim();
  const c = claims(token);
  if (!c || !c.sub) {
    say("That is not a callctl access token.", true);
    return;
  }
  state.token = token;
  state.device = deviceId();
  try {
    await connect();
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      localStorage.removeItem("callctl.token");
      state.token = null;
      say("Sign-in refused: " + e.message, true);
      return;
    }
    say("Cannot reach the server; retrying…", true);
    scheduleReconnect();
  }
  localStorage.setItem("callctl.token", token);
  $("signin").hidden = true;
  $("phone").hidden = false;
}

function signOut() {
  if (state.call) hangup();
  if (state.events) state.events.close();
  state.events = null;
  state.token = null;
  localStorage.removeItem("callctl.token");
  $("signin").hidden = false;
  $("phone").hidden = true;
  $("identity").textContent = "not signed in";
  setOnline(false);
}

function setOnline(on) {
  state.online = on;
  const b = $("connection");
  b.textContent = on ? "online" : "offline";
  b.className = "badge " + (on ? "on" : "off");
}

// EventSource cannot send an Authorization header: trade the token for a
// single-use ticket, and resume with the last event id we saw.
async function connect() {
  const { ticket } = await api("POST", "/v1/stream-tickets", {});
  const params = new URLSearchParams({ ticket, device: state.device });
  if (state.lastEventId) params.set("last_event_id", state.lastEventId);
  const es = new EventSource("/v1/events?" + params.toString());
  state.events = es;
  const on = (name, handler) => es.addEventListener(name, (e) => {
    if (e.lastEventId) state.lastEventId = e.lastEventId;
    state.log.push(name);
    handler(JSON.parse(e.data));
  });
  on("registered", (ev) => {
    state.me = ev;
    setIce(ev.ice_servers, ev.ice_expires_at);
    if (!state.lastEventId && ev.cursor) state.lastEventId = ev.cursor;
    state.backoff = 250;
    $("identity").textContent = ev.user + (ev.service !== "default" ? " @ " + ev.service : "");
    setOnline(true);
    if (!state.call) say("");
  });
  on("call.incoming", onIncoming);
  on("call.ringing", (ev) => forCall(ev, (c) => {
    if (c.state !== "calling") return;
    setCallState(c, "ringing");
    say("Ringing " + c.peer + "…");
  }));
  on("call.answered", (ev) => forCall(ev, onAnswered));
  // when we hung up ourselves, the server's call.ended often comes before the
  // hangup POST returns: it is still our hangup
  on("call.ended", (ev) => forCall(ev, (c) => c.hungUp ? endCall(c, localEndReason(c), "local")
    : endCall(c, ev.reason, ev.by === "server" ? "server" : "remote")));
  // the server leaves out an empty "data"
  on("call.signal", (ev) => forCall(ev, (c) => onSignal(c, Object.assign({ data: {} }, ev, { data: ev.data || {} }))));
  on("stream.closing", (ev) => {
    if (ev.reason === "token_expired") {
      es.close();
      say("Your token expired: sign in again.", true);
      signOut();
    }
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED || es !== state.events) return reconnect(es);
    // the browser retries by itself with the same (used) ticket: take over
    reconnect(es);
  };
}

function reconnect(es) {
  es.close();
  if (state.events !== es || !state.token) return;
  state.events = null;
  setOnline(false);
  scheduleReconnect();
}

function scheduleReconnect() {
  const delay = state.backoff;
  state.backoff = Math.min(5000, state.backoff * 2);
  setTimeout(async () => {
    if (!state.token || state.events) return;
    try {
      await connect();
    } catch (e) {
      if (e.status === 401) {
        say("Sign-in refused: " + e.message, true);
        signOut();
        return;
      }
      scheduleReconnect();
    }
  }, delay);
}

// STUN/TURN from the server; TURN credentials expire, so fetch fresh ones
// before a call when less than a minute of them is left
function setIce(servers, expiresAt) {
  state.iceServers = (servers || []).map((s) => ({ urls: s.urls, username: s.username, credential: s.credential }));
  state.iceExpiresAt = expiresAt || null;
}

async function freshIce() {
  if (!state.iceExpiresAt || state.iceExpiresAt * 1000 - Date.now() > 60000) return;
  try {
    const r = await api("GET", "/v1/ice-servers");
    setIce(r.ice_servers, r.expires_at);
  } catch (e) { /* the ones we have may still do */ }
}

function forCall(ev, fn) {
  const call = state.call;
  if (call && call.id === ev.call_id) fn(call, ev);
  // the stream can be quicker than the POST that places the call: keep the
  // events of a call whose id we do not know yet, replayed when we know it
  else if (call && call.role === "caller" && !call.id && call.state !== "ended") state.early.push([ev, fn]);
}

function replayEarly(call) {
  const early = state.early;
  state.early = [];
  for (const [ev, fn] of early) if (state.call === call && ev.call_id === call.id) fn(call, ev);
}

// --------------------------------------------------------------------- media

function newPeerConnection(call) {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers, iceTransportPolicy: state.relayOnly ? "relay" : "all" });
  attachChannel(call, pc);
  pc.ontrack = (e) => {
    if (call.pc !== pc) return;
    const stream = e.streams[0] || new MediaStream([e.track]);
    if (e.track.kind === "audio") {
      // the first packet from the peer unmutes the remote track
      const first = () => { if (!call.timeline.firstAudio) call.timeline.firstAudio = Date.now(); };
      if (!e.track.muted) first(); else e.track.addEventListener("unmute", first, { once: true });
      $("remote-audio").srcObject = stream;
      meter(stream, "peer-level", call);
      call.remoteAudio = stream;
    } else {
      // every call negotiates video: the box shows once frames arrive
      const v = $("remote-video");
      v.onresize = () => {
        if (state.call === call && v.videoWidth > 0 && !call.remoteVideo) {
          call.remoteVideo = true;
          showVideos(call);
        }
      };
      v.srcObject = new MediaStream([e.track]);
    }
  };
  pc.onconnectionstatechange = () => {
    if (call.pc !== pc) return;  // a connection we replaced
    const s = pc.connectionState;
    if (s === "connected") {
      call.mediaUp = true;
      if (call.state === "reconnecting") reconnected(call);
      else maybeConnected(call);
    } else if (s === "failed" || s === "disconnected") {
      mediaLost(call, pc);
    }
  };
  return pc;
}

// ----------------------------------------------------------------- messages
// One data channel per peer connection, made by both sides (negotiated, id 0),
// as callctl does: {"v":1,"id":N,"type":"text"|"json","body":…} and {"v":1,"ack":N}.
// A message not acknowledged is sent again on the next connection's channel.

function attachChannel(call, pc) {
  const ch = pc.createDataChannel("callctl", { negotiated: true, id: 0, ordered: true });
  call.channel = ch;
  ch.onopen = () => {
    if (call.channel !== ch) return;
    for (const entry of call.outbox.values()) ch.send(entry.text);
  };
  ch.onmessage = (e) => { if (call.channel === ch) onChannelMessage(call, ch, e.data); };
}

function onChannelMessage(call, ch, data) {
  if (typeof data !== "string" || data.length > MAX_MESSAGE_BYTES * 4) return;
  let m;
  try { m = JSON.parse(data); } catch (e) { return; }
  if (!m || typeof m !== "object" || m.v !== 1) return;
  if (Number.isSafeInteger(m.ack)) {
    const entry = call.outbox.get(m.ack);
    if (entry) { call.outbox.delete(m.ack); entry.done(true); }
    return;
  }
  if (!Number.isSafeInteger(m.id) || m.id < 1 || !["text", "json"].includes(m.type)) return;
  if (m.type === "text" && typeof m.body !== "string") return;
  ch.send(JSON.stringify({ v: 1, ack: m.id }));
  if (call.seen.has(m.id)) return;
  call.seen.add(m.id);
  state.messages.push({ type: m.type, body: m.body });
  chatLine(call.peer + ": " + (m.type === "text" ? m.body : JSON.stringify(m.body)), "in");
}

// resolves true once the peer acknowledged it, false when the call ended first
function sendMessage(call, type, body) {
  const id = call.nextMessageId++;
  const text = JSON.stringify({ v: 1, id, type, body });
  if (new TextEncoder().encode(text).length > MAX_MESSAGE_BYTES) {
    say("That message is too long (at most " + MAX_MESSAGE_BYTES + " bytes).", true);
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    call.outbox.set(id, { text, done: resolve });
    if (call.channel && call.channel.readyState === "open") call.channel.send(text);
  });
}

function chatLine(text, cls) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;  // never as HTML: the peer's words are text
  $("chat-log").appendChild(li);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return li;
}

async function sendChat(e) {
  e.preventDefault();
  const call = state.call;
  const text = $("chat-input").value;
  if (!call || !call.connectedAt || !text) return;
  $("chat-input").value = "";
  const li = chatLine("you: " + text, "out");
  li.classList.add((await sendMessage(call, "text", text)) ? "delivered" : "failed");
}

function sendDtmf(tones) {
  const call = state.call;
  if (!call || !call.pc || !call.connectedAt) return false;
  const sender = call.pc.getSenders().find((s) => s.track && s.track.kind === "audio") ||
                 call.pc.getSenders().find((s) => s.dtmf);
  if (!sender || !sender.dtmf || !sender.dtmf.canInsertDTMF) {
    say("The other side takes no DTMF in this call.", true);
    return false;
  }
  sender.dtmf.insertDTMF(tones, 100, 70);
  state.dtmfSent = (state.dtmfSent || "") + tones;
  return true;
}

async function openDoor() {
  const call = state.call;
  if (!call || !call.connectedAt) return;
  const door = state.door;
  if (door.kind === "dtmf") {
    if (sendDtmf(door.value)) say(door.label + ": sent " + door.value);
    return;
  }
  const ok = await sendMessage(call, door.kind, door.value);
  say(door.label + (ok ? ": done" : ": not delivered"), !ok);
}

// ------------------------------------------------------------- reconnecting
// As callctl does (docs/NETWORK.md): when the media path breaks, the caller
// negotiates a fresh peer connection through the server ("reoffer", numbered
// attempts, a new one every 2 s); the callee answers each and, when it saw the
// loss first, asks the caller to start ("reconnect").

const RECONNECT_TIMEOUT_MS = 20000;
const RECONNECT_RETRY_MS = 2000;

function mediaLost(call, pc) {
  if (!call.connectedAt) {
    if (pc.connectionState === "failed") endCall(call, "network_lost", "local", true, "the media path could not be established");
    return;
  }
  startReconnecting(call, false);
}

function startReconnecting(call, asked) {
  if (call.state === "reconnecting" || call.state === "ended") return;
  call.lostAt = Date.now();
  call.reconnects = (call.reconnects || 0) + 1;
  setCallState(call, "reconnecting");
  say("Connection lost: reconnecting…");
  const epoch = call.reconnects;
  call.reconnectDeadline = setTimeout(() => {
    if (state.call === call && call.state === "reconnecting" && call.reconnects === epoch) {
      endCall(call, "network_lost", "local", true, "the media path did not come back");
    }
  }, RECONNECT_TIMEOUT_MS);
  if (call.role === "caller") reoffer(call);
  else if (!asked) signal("reconnect", {});
}

function attachLocal(call, pc) {
  for (const t of pc.getTransceivers()) {
    const kind = t.receiver.track.kind;
    const track = kind === "audio" ? call.local.getAudioTracks()[0]
      : call.videoSending ? call.local.getVideoTracks()[0] : null;
    t.direction = "sendrecv";
    if (track) {
      t.sender.replaceTrack(track);
      t.sender.setStreams && t.sender.setStreams(call.local);
    }
    if (kind === "video") call.videoTransceiver = t;
  }
}

async function reoffer(call) {
  if (state.call !== call || call.state !== "reconnecting") return;
  const attempt = call.attempt = (call.attempt || 0) + 1;
  const old = call.pc;
  const pc = call.pc = newPeerConnection(call);
  if (old) old.close();
  pc.addTransceiver(call.local.getAudioTracks()[0], { direction: "sendrecv", streams: [call.local] });
  const vt = call.videoSending ? call.local.getVideoTracks()[0] : null;
  call.videoTransceiver = vt
    ? pc.addTransceiver(vt, { direction: "sendrecv", streams: [call.local] })
    : pc.addTransceiver("video", { direction: "sendrecv" });
  try {
    await freshIce();
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    if (call.pc === pc) signal("reoffer", { sdp: pc.localDescription.sdp, attempt });
  } catch (e) { /* the next attempt tries again */ }
  setTimeout(() => { if (call.attempt === attempt) reoffer(call); }, RECONNECT_RETRY_MS);
}

async function answerReoffer(call, sdp, attempt) {
  if (!call.local) return;
  if (call.state === "connected") startReconnecting(call, true);
  const old = call.pc;
  const pc = call.pc = newPeerConnection(call);
  if (old) old.close();
  try {
    await pc.setRemoteDescription({ type: "offer", sdp });
    attachLocal(call, pc);
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    if (call.pc === pc) signal("reanswer", { sdp: pc.localDescription.sdp, attempt });
  } catch (e) {
    signal("reoffer-refused", { reason: String(e.message || e) });
  }
}

function reconnected(call) {
  clearTimeout(call.reconnectDeadline);
  call.attempt = (call.attempt || 0) + 1000000;  // no retry of an attempt that is not needed
  setCallState(call, "connected");
  say("Reconnected to " + call.peer + " (" + ((Date.now() - call.lostAt) / 1000).toFixed(1) + " s without media)");
}

async function localMedia(video) {
  if (state.mediaBlocked) throw Object.assign(new Error(INSECURE), { reason: "device_error" });
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: video ? { width: 640, height: 480 } : false });
  } catch (e) {
    throw Object.assign(new Error("microphone/camera: " + e.message), { reason: "device_error" });
  }
}

// non-trickle ICE: the server relays whole SDPs, so gather first. Host
// candidates come within milliseconds of each other, while "complete" can take
// much longer (every interface is tried): send 60 ms after the first one.
async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await Promise.race([
    new Promise((resolve) => pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    })),
    new Promise((resolve) => pc.addEventListener("icecandidate", (e) => {
      if (e.candidate) setTimeout(resolve, 60);
    }, { once: true })),
    sleep(3000),
  ]);
}

function meter(stream, id, call) {
  try {
    const ctx = call.audioContext || (call.audioContext = new AudioContext());
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    ctx.createMediaStreamSource(stream).connect(analyser);
    if (id === "peer-level") call.remoteAnalyser = analyser;
    const buf = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (state.call !== call) return;
      analyser.getFloatTimeDomainData(buf);
      let peak = 0;
      for (const v of buf) peak = Math.max(peak, Math.abs(v));
      $(id).value = peak;
      requestAnimationFrame(tick);
    };
    tick();
  } catch (e) { /* meters are a nicety */ }
}

// the dominant frequency of what we hear from the peer (used by the tests)
function remoteDominantHz() {
  const call = state.call;
  if (!call || !call.remoteAnalyser) return null;
  const a = call.remoteAnalyser;
  const bins = new Float32Array(a.frequencyBinCount);
  a.getFloatFrequencyData(bins);
  let best = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  return best * a.context.sampleRate / a.fftSize;
}

// -------------------------------------------------------------------- ringing
// An incoming call rings (the title and, when allowed, a notification say who
// calls); an outgoing one plays a ringback while the other side rings. The
// tones are generated with WebAudio: no sound file.

const TONES = {
  ring: { hz: [400, 450], pattern: [0.4, 0.2, 0.4, 2.0], level: 0.2 },  // on, off, on, off (s)
  ringback: { hz: [425], pattern: [1.0, 4.0], level: 0.1 },
};

// one AudioContext for the tones; browsers start it only after a user gesture
// (sign-in, or any click/key), so one is made and resumed on each of those
function audioContext() {
  try {
    if (!state.audio) state.audio = new AudioContext();
    if (state.audio.state === "suspended") state.audio.resume().catch(() => {});
  } catch (e) {
    return null;
  }
  return state.audio;
}

function askNotifications() {
  try {
    // only from a real user gesture (Firefox logs an error otherwise)
    const gesture = !navigator.userActivation || navigator.userActivation.isActive;
    if (gesture && "Notification" in window && Notification.permission === "default") {
      const p = Notification.requestPermission();
      if (p && p.catch) p.catch(() => {});
    }
  } catch (e) { /* no notifications here */ }
}

function updateRing() {
  const call = state.call;
  const kind = !call || call.state !== "ringing" ? null : call.role === "callee" ? "ring" : "ringback";
  if (!kind) return stopRing();
  if (state.ringing && state.ringing.call === call && state.ringing.kind === kind) return;
  stopRing();
  const r = state.ringing = { kind, call, call_id: call.id, peer: call.peer, nodes: null, notification: null };
  r.nodes = tone(TONES[kind]);
  if (kind === "ring") {
    document.title = "Ringing: " + call.peer + " — callctl";
    r.notification = notify(call);
  }
}

function tone(spec) {
  const ctx = audioContext();
  if (!ctx) return null;
  try {
    const gain = ctx.createGain();
    gain.gain.value = 0;
    const analyser = ctx.createAnalyser();  // what is playing, for the tests
    gain.connect(analyser);
    analyser.connect(ctx.destination);
    const oscs = spec.hz.map((hz) => {
      const o = ctx.createOscillator();
      o.frequency.value = hz;
      o.connect(gain);
      o.start();
      return o;
    });
    // the cadence, scheduled ahead for longer than any ring lasts (10 min)
    const period = spec.pattern.reduce((a, b) => a + b, 0);
    let t = ctx.currentTime;
    for (let n = 0; n < Math.ceil(600 / period); n++) {
      spec.pattern.forEach((d, i) => {
        gain.gain.setTargetAtTime(i % 2 === 0 ? spec.level / spec.hz.length : 0, t, 0.005);
        t += d;
      });
    }
    return { ctx, gain, analyser, oscs };
  } catch (e) {
    return null;  // a ring tone is a nicety
  }
}

function notify(call) {
  try {
    if (!("Notification" in window) || Notification.permission !== "granted") return null;
    const n = new Notification(call.peer + " is calling", {
      body: "Incoming " + call.media + " call (callctl)", tag: "callctl-ring", requireInteraction: true,
    });
    n.onclick = () => { window.focus(); n.close(); };
    return n;
  } catch (e) {
    return null;  // e.g. Chrome on Android allows them only from a service worker
  }
}

function stopRing() {
  const r = state.ringing;
  if (!r) return;
  state.ringing = null;
  if (r.nodes) {
    r.nodes.gain.gain.cancelScheduledValues(0);
    r.nodes.gain.gain.value = 0;
    for (const o of r.nodes.oscs) {
      try { o.stop(); } catch (e) { /* already stopped */ }
      o.disconnect();
    }
    r.nodes.gain.disconnect();
    r.nodes.analyser.disconnect();
  }
  if (r.notification) try { r.notification.close(); } catch (e) { /* gone */ }
  if (r.kind === "ring") document.title = TITLE;
}

// what the ring plays right now: {kind, running, level} or null (used by the tests)
function ringtone() {
  const r = state.ringing;
  if (!r) return null;
  let level = 0;
  if (r.nodes) {
    const buf = new Float32Array(r.nodes.analyser.fftSize);
    r.nodes.analyser.getFloatTimeDomainData(buf);
    for (const v of buf) level = Math.max(level, Math.abs(v));
  }
  return { kind: r.kind, peer: r.peer, running: !!r.nodes && r.nodes.ctx.state === "running", level,
           notified: !!r.notification, title: document.title };
}

// ---------------------------------------------------------------------- calls

function newCall(fields) {
  return Object.assign({
    id: null, peer: null, role: null, media: "audio", pc: null, local: null,
    state: "idle", answered: false, mediaUp: false, connectedAt: null,
    muted: false, held: false, videoSending: false, prepared: null, peerFlags: {},
    // app messages (callctl's data channel, docs/CONTROL.md): ours waiting for an ack, ids seen
    channel: null, nextMessageId: 1, outbox: new Map(), seen: new Set(),
    // wall-clock ms of the call's milestones (shown to tests and benchmarks)
    timeline: { start: Date.now(), connected: null, firstAudio: null },
  }, fields);
}

function setCallState(call, s) {
  call.state = s;
  $("call-state").textContent = s;
  updateControls();
  updateRing();
}

// one call at a time: no new call, and no signing out, while one is on
function updateControls() {
  const busy = !!state.call && state.call.state !== "ended";
  $("call-button").disabled = busy || state.mediaBlocked;
  $("signout").disabled = busy;
  $("peer").disabled = busy;
  $("with-video").disabled = busy;
  $("accept").disabled = state.mediaBlocked;
}

// a video box shows only when it has something to show: our camera while we
// send it, the peer's once its frames arrive (and not while it is paused)
function showVideos(call) {
  const peerOff = ["paused", "disabled", "off"].includes(call.peerFlags.video);
  const remote = !!call.remoteVideo && !peerOff;
  const local = !!call.local && call.videoSending;
  $("remote-video").hidden = !remote;
  $("local-video").hidden = !local;
  $("videos").hidden = !remote && !local;
}

function showCall(call) {
  if ($("incall").hidden) {  // nothing left from the call before
    $("timer").textContent = "00:00";
    $("peer-flags").textContent = "";
    $("mic-level").value = 0;
    $("peer-level").value = 0;
    $("remote-audio").muted = false;
    $("chat-log").textContent = "";
    $("keypad").hidden = true;
  }
  $("ringing").hidden = true;
  $("incall").hidden = false;
  $("call-peer").textContent = call.peer;
  $("local-video").srcObject = call.local;
  updateButtons(call);
}

function updateButtons(call) {
  const ready = !!call.local;  // before the microphone is open there is nothing to mute or pause
  $("mute").textContent = call.muted ? "Unmute" : "Mute";
  $("mute").disabled = !ready;
  const inCall = ready && !!call.connectedAt;
  $("door").textContent = state.door.label;
  $("door").disabled = !inCall;
  $("chat-send").disabled = !inCall;
  for (const b of $("keypad").querySelectorAll("button")) b.disabled = !inCall;
  $("keypad-toggle").disabled = !inCall;
  $("hold").textContent = call.held ? "Unhold" : "Hold";
  $("hold").disabled = !ready || !call.connectedAt;
  const hasVideo = ready && call.local.getVideoTracks().length > 0;
  $("video-toggle").textContent = call.videoSending ? "Pause video" : hasVideo ? "Resume video" : "Start video";
  $("video-toggle").disabled = !ready;
  showVideos(call);
}

async function placeCall(peer, video) {
  if (state.call) return;
  await freshIce();
  const call = newCall({ peer, role: "caller", media: video ? "video" : "audio" });
  state.call = call;
  showCall(call);
  setCallState(call, "calling");
  say("Calling " + peer + "…");
  try {
    call.local = await localMedia(video);
    call.timeline.media = Date.now();
    call.videoSending = call.local.getVideoTracks().length > 0;
    showCall(call);
    const pc = call.pc = newPeerConnection(call);
    pc.addTransceiver(call.local.getAudioTracks()[0], { direction: "sendrecv", streams: [call.local] });
    // video is negotiated in every call (as callctl does): pause, resume and
    // "video on" are then a track swap, with no renegotiation
    const vt = call.local.getVideoTracks()[0];
    call.videoTransceiver = vt
      ? pc.addTransceiver(vt, { direction: "sendrecv", streams: [call.local] })
      : pc.addTransceiver("video", { direction: "sendrecv" });
    call.videoSending = !!vt;
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    call.timeline.gathered = Date.now();
    const info = await api("POST", "/v1/calls", { to: peer, media: call.media, sdp: pc.localDescription.sdp });
    call.timeline.created = Date.now();
    call.id = info.call_id;
    if (info.state === "ended") endCall(call, info.reason, "server");
    else replayEarly(call);
  } catch (e) {
    endCall(call, e.reason || (e.status === 401 ? "auth_failed" : "internal_error"), "local", false, e.message);
  }
}

async function onAnswered(call, ev) {
  if (call.answered) return;  // a replayed event after a reconnect: already handled
  call.answered = true;
  call.timeline.answered = Date.now();
  setCallState(call, "connecting");
  if (call.prepared !== ev.sdp) {
    try {
      await call.pc.setRemoteDescription({ type: "answer", sdp: ev.sdp });
    } catch (e) {
      return endCall(call, "internal_error", "local", true, e.message);
    }
  }
  maybeConnected(call);
}

function onIncoming(ev) {
  if (state.call) {  // one call at a time: the caller hears busy
    api("POST", `/v1/calls/${ev.call_id}/decline`, { busy: true }).catch(() => {});
    return;
  }
  if (ev.ring_expires_at * 1000 < Date.now()) return;
  const call = newCall({ id: ev.call_id, peer: ev.caller, role: "callee", media: ev.media, offer: ev.sdp });
  state.call = call;
  setCallState(call, "ringing");
  $("ring-from").textContent = ev.caller;
  $("ring-media").textContent = ev.media;
  $("ringing").hidden = false;
  say("Incoming " + ev.media + " call from " + ev.caller);
}

async function accept() {
  const call = state.call;
  if (!call || call.role !== "callee" || call.state !== "ringing") return;
  stopRing();  // at once, not after the ICE servers and the microphone
  await freshIce();
  call.timeline.start = Date.now();  // the callee's set-up runs from accept
  setCallState(call, "connecting");
  showCall(call);
  try {
    call.local = await localMedia(call.media === "video");
    call.videoSending = call.local.getVideoTracks().length > 0;
    showCall(call);
    const pc = call.pc = newPeerConnection(call);
    await pc.setRemoteDescription({ type: "offer", sdp: call.offer });
    for (const t of pc.getTransceivers()) {
      t.direction = "sendrecv";
      const kind = t.receiver.track.kind;
      const track = kind === "audio" ? call.local.getAudioTracks()[0] : call.local.getVideoTracks()[0];
      if (track) {
        await t.sender.replaceTrack(track);
        t.sender.setStreams && t.sender.setStreams(call.local);
      }
      if (kind === "video") call.videoTransceiver = t;
    }
    call.videoSending = call.local.getVideoTracks().length > 0;
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await api("POST", `/v1/calls/${call.id}/answer`, { sdp: pc.localDescription.sdp });
    call.answered = true;
    maybeConnected(call);
  } catch (e) {
    if (e.code === "already_answered") return endCall(call, "answered_elsewhere", "remote");
    if (e.code === "call_ended") return endCall(call, "cancelled", "remote");
    endCall(call, e.reason || "internal_error", "local", true, e.message);
  }
}

async function decline() {
  const call = state.call;
  if (!call || call.state !== "ringing" || call.role !== "callee") return;
  stopRing();
  api("POST", `/v1/calls/${call.id}/decline`, {}).catch(() => {});
  endCall(call, "declined", "local");
}

// ---------------------------------------------------------------- call statistics
// The figures callctl's media.stats gives (docs/EVENTS.md), from the browser's own getStats(),
// every 5 s while connected: RTT, loss each way, jitter, bitrate each way, playout, MOS.

const STATS_EVERY_MS = 5000;

// ITU-T G.107 E-model MOS from the one-way delay and the random loss (Opus: Ie 0, Bpl 20),
// as callctl computes it (media/stats.py)
function mos(oneWayMs, lossPct) {
  const d = Math.max(0, oneWayMs);
  const idd = 0.024 * d + (d > 177.3 ? 0.11 * (d - 177.3) : 0);
  const ppl = Math.max(0, Math.min(100, lossPct));
  const ie = 95 * ppl / (ppl + 20);
  const r = Math.max(0, Math.min(100, 93.2 - idd - ie));
  return Math.round((1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6) * 100) / 100;
}

async function sampleStats(call) {
  if (!call.pc || state.call !== call) return;
  const now = { at: performance.now() };
  let pairRtt = null;
  (await call.pc.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime != null) {
      pairRtt = s.currentRoundTripTime;
    }
    if (s.kind !== "audio") return;
    if (s.type === "inbound-rtp") {
      Object.assign(now, { received: s.packetsReceived || 0, lost: Math.max(0, s.packetsLost || 0),
        jitter: s.jitter, bytesIn: s.bytesReceived || 0, concealed: s.concealedSamples || 0,
        samples: s.totalSamplesReceived || 0,
        bufferDelay: s.jitterBufferDelay, emitted: s.jitterBufferEmittedCount });
    } else if (s.type === "outbound-rtp") {
      now.bytesOut = s.bytesSent || 0;
    } else if (s.type === "remote-inbound-rtp") {
      if (s.roundTripTime != null) now.rtt = s.roundTripTime;
      now.lossOut = s.fractionLost;
    }
  });
  const last = call.statsLast;
  call.statsLast = now;
  if (!last || state.call !== call) return;
  // a reconnect's new peer connection counts from zero: this interval starts its baseline
  if ((now.received || 0) < (last.received || 0) || (now.bytesOut || 0) < (last.bytesOut || 0)) return;
  const dt = (now.at - last.at) / 1000;
  const out = {};
  const rtt = now.rtt != null ? now.rtt : pairRtt;
  if (rtt != null) out.rtt_ms = Math.round(rtt * 10000) / 10;
  const got = (now.received || 0) - (last.received || 0), lost = (now.lost || 0) - (last.lost || 0);
  out.loss_in_pct = got + lost > 0 ? Math.round(1000 * lost / (got + lost)) / 10 : 0;
  if (now.lossOut != null) out.loss_out_pct = Math.round(1000 * now.lossOut) / 10;
  if (now.jitter != null) out.jitter_ms = Math.round(now.jitter * 10000) / 10;
  if (dt > 0) {
    out.kbps_out = Math.round(((now.bytesOut || 0) - (last.bytesOut || 0)) * 8 / dt / 100) / 10;
    out.kbps_in = Math.round(((now.bytesIn || 0) - (last.bytesIn || 0)) * 8 / dt / 100) / 10;
  }
  // the jitter buffer's mean delay over this interval (the counters are the call's totals)
  const emitted = (now.emitted || 0) - (last.emitted || 0);
  if (now.bufferDelay != null && emitted > 0) {
    out.playout_ms = Math.round((now.bufferDelay - (last.bufferDelay || 0)) / emitted * 10000) / 10;
  }
  const samples = (now.samples || 0) - (last.samples || 0);
  out.concealed_pct = samples > 0 ? Math.round(1000 * ((now.concealed || 0) - (last.concealed || 0)) / samples) / 10 : 0;
  out.packets_received = now.received || 0;
  out.packets_lost = now.lost || 0;
  out.mos = mos((out.rtt_ms || 0) / 2 + 20 + (out.playout_ms || 0), out.loss_in_pct);
  call.stats = out;
  const parts = [];
  if (out.rtt_ms != null) parts.push(`rtt ${Math.round(out.rtt_ms)} ms`);
  parts.push(`loss ${out.loss_in_pct.toFixed(1)} in` + (out.loss_out_pct != null ? ` / ${out.loss_out_pct.toFixed(1)} out` : "") + " %");
  if (out.jitter_ms != null) parts.push(`jitter ${Math.round(out.jitter_ms)} ms`);
  if (out.kbps_out != null) parts.push(`${Math.round(out.kbps_out)} out / ${Math.round(out.kbps_in)} in kbps`);
  parts.push(`MOS ${out.mos.toFixed(1)}`);
  $("call-stats").textContent = parts.join(" · ");
}

function watchStats(call) {
  const tick = () => {
    if (state.call !== call || call.state === "ended") return;
    sampleStats(call).catch(() => {}).finally(() => { call.statsTimer = setTimeout(tick, STATS_EVERY_MS); });
  };
  tick();
}

function maybeConnected(call) {
  if (call.answered && call.mediaUp && !call.connectedAt) {
    call.connectedAt = Date.now();
    call.timeline.connected = call.connectedAt;
    setCallState(call, "connected");
    updateButtons(call);
    say("Connected to " + call.peer);
    const tick = () => {
      if (state.call !== call) return;
      const s = Math.floor((Date.now() - call.connectedAt) / 1000);
      $("timer").textContent = String(Math.floor(s / 60)).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0");
      setTimeout(tick, 500);
    };
    tick();
    if (call.local) meter(call.local, "mic-level", call);
    watchStats(call);
  }
}

function onSignal(call, ev) {
  if (ev.kind === "prepare" && call.role === "caller" && !call.answered && !call.prepared) {
    // a callctl callee prepares while ringing: start ICE/DTLS right away
    call.prepared = ev.data.sdp;
    call.pc.setRemoteDescription({ type: "answer", sdp: ev.data.sdp }).catch(() => { call.prepared = null; });
  } else if (ev.kind === "reoffer" && call.role === "callee" && typeof ev.data.sdp === "string") {
    answerReoffer(call, ev.data.sdp, ev.data.attempt || 0);
  } else if (ev.kind === "reanswer" && call.role === "caller" && ev.data.attempt === call.attempt && call.pc) {
    call.pc.setRemoteDescription({ type: "answer", sdp: ev.data.sdp }).catch(() => {});
  } else if (ev.kind === "reconnect" && call.role === "caller" && call.connectedAt) {
    startReconnecting(call, true);
  } else if (ev.kind === "mute" || ev.kind === "unmute") {
    call.peerFlags.muted = ev.kind === "mute";
  } else if (ev.kind === "hold" || ev.kind === "unhold") {
    call.peerFlags.held = ev.kind === "hold";
    applyHold(call);
  } else if (ev.kind === "video") {
    call.peerFlags.video = ev.data.state;
  }
  showFlags(call);
}

function showFlags(call) {
  const f = [];
  if (call.held) f.push("on hold");
  if (call.peerFlags.held) f.push(call.peer + " put the call on hold");
  if (call.peerFlags.muted) f.push(call.peer + " muted");
  if (call.peerFlags.video) f.push(call.peer + "'s video " + call.peerFlags.video);
  $("peer-flags").textContent = f.join(" · ");
  showVideos(call);
}

function signal(kind, data) {
  const call = state.call;
  if (call && call.id) api("POST", `/v1/calls/${call.id}/signal`, { kind, data }).catch(() => {});
}

function toggleMute() {
  const call = state.call;
  if (!call || !call.local) return;
  call.muted = !call.muted;
  applyHold(call);
  signal(call.muted ? "mute" : "unmute", { audio: true });
  updateButtons(call);
}

// on hold (ours or the peer's): our microphone sends silence, the peer is not
// played, our video stops; the path stays up and comes back as it was
function applyHold(call) {
  const onHold = call.held || !!call.peerFlags.held;
  if (call.local) call.local.getAudioTracks().forEach((t) => { t.enabled = !call.muted && !onHold; });
  $("remote-audio").muted = onHold;
  const track = call.local && call.local.getVideoTracks()[0];
  if (call.videoTransceiver && track && call.videoSending) {
    call.videoTransceiver.sender.replaceTrack(onHold ? null : track).catch(() => {});
  }
}

function toggleHold() {
  const call = state.call;
  if (!call || !call.local || !call.connectedAt) return;
  call.held = !call.held;
  applyHold(call);
  signal(call.held ? "hold" : "unhold", {});
  updateButtons(call);
  showFlags(call);
}

async function toggleVideo() {
  const call = state.call;
  if (!call || !call.pc || !call.videoTransceiver) return;
  if (call.held || call.peerFlags.held) return say("The call is on hold: its video comes back with it.", true);
  let track = call.local.getVideoTracks()[0];
  if (!track) {  // an audio call: turn video on
    try {
      const cam = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
      track = cam.getVideoTracks()[0];
      call.local.addTrack(track);
      $("local-video").srcObject = call.local;
    } catch (e) {
      return say("Camera: " + e.message, true);
    }
    await call.videoTransceiver.sender.replaceTrack(track);
    call.videoSending = true;
    signal("video", { state: "enabled" });
  } else if (call.videoSending) {
    await call.videoTransceiver.sender.replaceTrack(null);
    call.videoSending = false;
    signal("video", { state: "paused" });
  } else {
    await call.videoTransceiver.sender.replaceTrack(track);
    call.videoSending = true;
    signal("video", { state: "resumed" });
  }
  updateButtons(call);
}

function localEndReason(call) {
  return call.connectedAt ? "hangup" : call.role === "caller" ? "cancelled" : "declined";
}

async function hangup() {
  const call = state.call;
  if (!call || call.hungUp) return;
  call.hungUp = true;  // the call.ended this causes may come first: it is ours
  stopRing();
  // tell the server before closing the media path, so the peer hears "hangup"
  // rather than seeing the connection drop first
  if (call.id) await Promise.race([api("POST", `/v1/calls/${call.id}/hangup`, {}).catch(() => {}), sleep(2000)]);
  endCall(call, localEndReason(call), "local");
}

function endCall(call, reason, source, tellServer = false, detail = "") {
  if (state.call !== call || call.state === "ended") return;
  setCallState(call, "ended");
  if (tellServer && call.id) {
    const r = ["network_lost", "device_error", "internal_error"].includes(reason) ? reason : "hangup";
    api("POST", `/v1/calls/${call.id}/hangup`, { reason: r }).catch(() => {});
  }
  clearTimeout(call.reconnectDeadline);
  clearTimeout(call.statsTimer);
  $("call-stats").textContent = "";
  if (call.pc) call.pc.close();
  for (const entry of call.outbox.values()) entry.done(false);
  call.outbox.clear();
  if (call.local) call.local.getTracks().forEach((t) => t.stop());
  if (call.audioContext) call.audioContext.close().catch(() => {});
  state.lastEnd = { reason, source, call_id: call.id, timeline: call.timeline };
  state.call = null;
  state.early = [];
  updateControls();
  updateRing();
  $("incall").hidden = true;
  $("ringing").hidden = true;
  $("remote-video").srcObject = null;
  $("remote-audio").srcObject = null;
  const who = source === "local" ? "" : source === "remote" ? " (by " + call.peer + ")" : " (by the server)";
  say("Call ended: " + (REASONS[reason] || reason) + who + (detail ? " — " + detail : ""), reason === "auth_failed" || reason === "internal_error" || reason === "device_error");
}

// ----------------------------------------------------------------------- UI

window.addEventListener("DOMContentLoaded", () => {
  if (state.mediaBlocked) {
    const box = $("insecure");
    for (const [text, code] of INSECURE_PARTS) {
      const el = code ? document.createElement("code") : document.createTextNode(text);
      if (code) el.textContent = text;
      box.appendChild(el);
    }
    box.hidden = false;
  }
  updateControls();
  // a user gesture lets the ring tone play later, and may allow notifications
  $("signin-button").addEventListener("click", () => { audioContext(); askNotifications(); });
  for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, () => audioContext(), { passive: true });
  $("signin-button").addEventListener("click", () => signIn($("token").value));
  $("signout").addEventListener("click", signOut);
  $("dial").addEventListener("submit", (e) => {
    e.preventDefault();
    placeCall($("peer").value.trim(), $("with-video").checked);
  });
  $("accept").addEventListener("click", accept);
  $("decline").addEventListener("click", decline);
  $("hangup").addEventListener("click", hangup);
  $("mute").addEventListener("click", toggleMute);
  $("hold").addEventListener("click", toggleHold);
  $("door").addEventListener("click", openDoor);
  $("chat-form").addEventListener("submit", sendChat);
  for (const b of $("keypad").querySelectorAll("button")) b.addEventListener("click", () => sendDtmf(b.dataset.key));
  $("keypad-toggle").addEventListener("click", () => { $("keypad").hidden = !$("keypad").hidden; });
  $("video-toggle").addEventListener("click", toggleVideo);
  const saved = localStorage.getItem("callctl.token");
  if (saved) signIn(saved);
});

// what the tests (and curious people in the console) can read
window.callctl = {
  state,
  sendMessage: (type, body) => state.call && sendMessage(state.call, type, body),
  remoteDominantHz,
  ringtone,
  callStats: () => (state.call && state.call.stats) || null,
  async stats() {
    const call = state.call;
    if (!call || !call.pc) return null;
    const out = {};
    (await call.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp") out["in_" + s.kind] = { packets: s.packetsReceived, frames: s.framesDecoded, width: s.frameWidth, height: s.frameHeight, energy: s.totalAudioEnergy };
      if (s.type === "outbound-rtp") out["out_" + s.kind] = { packets: s.packetsSent, frames: s.framesEncoded };
    });
    return out;
  },
};
