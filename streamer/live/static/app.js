// streamer live page: connect over WebRTC, send control changes, show the server's stats.
// Control ids name the setting they change: "composite-mode" -> composite.mode.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { pc: null, peer: null, config: null, timer: null, camera: null, admin: null };
const SIZES = [32, 64, 128, 192, 256, 320, 384, 512, 768, 1024];

function showError(message) { $("error").textContent = message || ""; }
function setStatus(text) { $("status").textContent = text; }

// The server takes changes only as JSON from this page's origin; the model size (shared by every
// viewer) only with the operator's token, given to the page as /#admin=TOKEN.
function jsonHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (state.admin) headers.Authorization = `Bearer ${state.admin}`;
  return headers;
}

async function postJSON(path, body, options = {}) {
  const response = await fetch(path, {
    method: "POST", headers: jsonHeaders(), body: JSON.stringify(body), ...options,
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function gatheringDone(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
  });
}

const CONTROLS = "[id^='composite-'], [id^='smoothing-'], [id^='propagation-']";

// The settings of every control the server knows, as {composite: {...}, smoothing: {...}, propagation: {...}}.
function controlValues() {
  const values = { composite: {}, smoothing: {}, propagation: {} };
  for (const element of document.querySelectorAll(CONTROLS)) {
    const [section, key] = element.id.split("-");
    const known = state.config && state.config[section];
    if (!known || !(key in known)) continue;
    values[section][key] = element.type === "checkbox" ? element.checked
      : element.type === "range" || element.type === "number" ? Number(element.value) : element.value;
  }
  return values;
}

async function sendControls(extra = {}) {
  if (!state.peer) return;
  try {
    await postJSON("/params", { peer: state.peer, ...controlValues(), ...extra });
    showError("");
  } catch (err) { showError(err.message); }
}

async function sendBackground(file) {
  if (!state.peer || !file) return;
  const response = await fetch(`/background?peer=${encodeURIComponent(state.peer)}`, {
    method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file,
  });
  const data = await response.json();
  showError(response.ok ? "" : data.error);
  if (response.ok) $("composite-mode").value = "image";
}

async function start() {
  showError("");
  $("start").disabled = true;
  try {
    const pc = new RTCPeerConnection();
    state.pc = pc;
    pc.addEventListener("track", (event) => {
      $("result").srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    pc.addEventListener("connectionstatechange", () => {
      setStatus(pc.connectionState);
      if (pc.connectionState === "failed") stop();
    });
    if (state.config.mode === "camera") {
      if (!navigator.mediaDevices) {
        // Not a secure context: the browser offers no camera to plain http from another machine.
        throw new Error(
          "this browser lends its camera only to https pages or to pages on its own machine: " +
            `open http://127.0.0.1:${location.port || 80} on the machine running streamer, or serve the page over https`,
        );
      }
      state.camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      for (const track of state.camera.getVideoTracks()) pc.addTransceiver(track, { direction: "sendrecv" });
    } else {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc);
    const answer = await postJSON("/offer", { sdp: pc.localDescription.sdp, type: "offer" });
    state.peer = answer.peer;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    await sendControls();
    state.timer = setInterval(pollStats, 1000);
    $("stop").disabled = false;
  } catch (err) {
    showError(err.message);
    await stop();
  }
}

async function stop() {
  clearInterval(state.timer);
  const { pc, peer, camera } = state;
  Object.assign(state, { pc: null, peer: null, timer: null, camera: null });
  if (peer) postJSON("/close", { peer }).catch(() => {});
  if (camera) camera.getTracks().forEach((track) => track.stop());
  if (pc) pc.close();
  $("result").srcObject = null;
  setStatus("idle");
  $("start").disabled = false;
  $("stop").disabled = true;
}

const STAT_LABELS = {
  fps: "delivered fps", keyframe_hz: "keyframes / s", infer_ms: "network (ms)", frame_ms_p95: "per frame p95 (ms)",
  latency_ms_p50: "latency p50 (ms)", latency_ms_p95: "latency p95 (ms)", dropped: "dropped",
  received: "received", sent: "sent", batch: "batch", peers: "peers", size: "model size", video: "video out",
};

async function pollStats() {
  if (!state.peer) return;
  try {
    const response = await fetch(`/stats?peer=${encodeURIComponent(state.peer)}`);
    if (!response.ok) return;
    const stats = await response.json();
    $("stats").replaceChildren(...Object.entries(STAT_LABELS).flatMap(([key, label]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = label;
      dd.textContent = Array.isArray(stats[key]) ? stats[key].join("x") : String(stats[key] ?? "-");
      dd.dataset.stat = key;
      return [dt, dd];
    }));
  } catch (err) { /* the next poll will tell */ }
}

function fillChoices(select, choices, current) {
  select.replaceChildren(...choices.map((choice) => {
    const option = document.createElement("option");
    option.value = option.textContent = String(choice);
    option.selected = String(choice) === String(current);
    return option;
  }));
}

function readAdminToken() {
  const token = new URLSearchParams(location.hash.slice(1)).get("admin");
  if (token) history.replaceState(null, "", location.pathname);  // keep it out of the address bar
  return token;
}

async function init() {
  state.admin = readAdminToken();
  state.config = await (await fetch("/config")).json();
  const { composite, smoothing, propagation, size, modes } = state.config;
  $("mode").textContent = state.config.mode === "camera" ? "(your camera)" : "(server source preview)";
  fillChoices($("composite-mode"), modes || [composite.mode], composite.mode);
  if (composite.color) $("composite-color").value = "#" + composite.color.map((v) => v.toString(16).padStart(2, "0")).join("");
  if (composite.blur_radius !== undefined) $("composite-blur_radius").value = composite.blur_radius;
  $("composite-mirror").checked = Boolean(composite.mirror);
  if (smoothing) {
    $("smoothing-enabled").checked = smoothing.enabled;
    $("smoothing-strength").value = smoothing.strength;
  }
  if (propagation) {
    $("propagation-enabled").checked = propagation.enabled;
    $("propagation-keyframe_every").value = propagation.keyframe_every;
  }
  const limit = state.config.max_size?.[0] ?? size?.[0];
  const sizes = SIZES.filter((s) => !limit || s <= limit);
  fillChoices($("size"), sizes.includes(size?.[0]) ? sizes : [size?.[0], ...sizes].filter(Boolean), size?.[0]);
  $("size").closest("label").hidden = !state.admin;
  const named = state.config.backgrounds || [];
  fillChoices($("named-background"), ["", ...named.map((entry) => entry.name)], "");
  $("named-background").closest("label").hidden = named.length === 0;
  $("named-background").addEventListener("change", () => {
    const entry = named.find((e) => e.name === $("named-background").value);
    if (!entry) return;
    $("composite-mode").value = entry.mode;
    sendControls({ composite: { ...controlValues().composite, mode: entry.mode, background: entry.name } });
  });
  for (const element of document.querySelectorAll(CONTROLS)) {
    const [section, key] = element.id.split("-");
    if (!(state.config[section] && key in state.config[section])) element.closest("label").hidden = true;
    element.addEventListener("change", () => sendControls());
  }
  $("size").addEventListener("change", () => sendControls({ size: Number($("size").value) }));
  $("background").addEventListener("change", () => sendBackground($("background").files[0]));
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  // A keepalive fetch outlives the page, like sendBeacon, but can send JSON.
  window.addEventListener("pagehide", () => {
    if (state.peer) postJSON("/close", { peer: state.peer }, { keepalive: true }).catch(() => {});
  });
}

window.streamer = { state, start, stop, sendControls, postJSON };
init().catch((err) => showError(`could not load the settings: ${err.message}`));
