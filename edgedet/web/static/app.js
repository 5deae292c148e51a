// edgedet console: plain JS, no build step. Pages: #/ (cameras), #/events, #/event/<id>, #/system.
// Everything updates by polling the REST API (no page reload).
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
let session = null;
let timer = null;
let page = null;

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const enc = encodeURIComponent;
const fmt = (v, digits = 1, unit = "") => (v === null || v === undefined ? "–" : `${Number(v).toFixed(digits)}${unit}`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

async function getJson(path) {
  const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  setConn(true);
  return resp.json();
}

function setConn(ok) {
  const el = $("#conn");
  el.textContent = ok ? "live" : "offline";
  el.className = `badge ${ok ? "connected" : "disconnected"}`;
}

async function postFeedback(id, verdict, category, note) {
  session = session || (await getJson(`${API}/session`));
  const resp = await fetch(`${API}/events/${enc(id)}/feedback`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", [session.write_header]: session.write_token },
    body: JSON.stringify({ verdict, category: category || null, note: note || "" }),
  });
  if (!resp.ok) throw new Error(`feedback: HTTP ${resp.status}`);
  return resp.json();
}

function verdictBadge(ev) {
  if (!ev.feedback) return '<span class="badge verdict-label" data-verdict="">no verdict</span>';
  const cat = ev.feedback.category ? ` (${esc(ev.feedback.category)})` : "";
  return `<span class="badge verdict-label ${esc(ev.feedback.verdict)}" data-verdict="${esc(ev.feedback.verdict)}">${esc(ev.feedback.verdict.replace("_", " "))}${cat}</span>`;
}

const CATEGORIES = ["", "cloud", "fog", "glare", "dust", "industrial_smoke", "other"];

function feedbackControls(ev) {
  const opts = CATEGORIES.map((c) => `<option value="${c}">${c ? c.replace("_", " ") : "category…"}</option>`).join("");
  return `<div class="actions" data-id="${esc(ev.id)}">
    ${verdictBadge(ev)}
    <button class="verdict-true" type="button">True alarm</button>
    <button class="verdict-false" type="button">False alarm</button>
    <select class="category" aria-label="category">${opts}</select></div>`;
}

function wireFeedback(root, after) {
  root.querySelectorAll(".actions[data-id]").forEach((box) => {
    const send = async (verdict) => {
      const category = $(".category", box).value;
      const note = $("#note") ? $("#note").value : "";
      try {
        const ev = await postFeedback(box.dataset.id, verdict, verdict === "false_alarm" ? category : null, note);
        box.querySelector(".verdict-label").outerHTML = verdictBadge(ev);
        if (after) after();
      } catch (err) {
        box.insertAdjacentHTML("beforeend", `<span class="error">${esc(err.message)}</span>`);
      }
    };
    $(".verdict-true", box).onclick = () => send("true_alarm");
    $(".verdict-false", box).onclick = () => send("false_alarm");
  });
}

// ------------------------------------------------------------------ overview

async function overview(main, first) {
  const cams = await getJson(`${API}/cameras`);
  if (first || !$("#grid")) main.innerHTML = '<h2>Cameras</h2><div class="grid" id="grid"></div>';
  const grid = $("#grid");
  for (const cam of cams) {
    let tile = grid.querySelector(`.tile[data-camera="${CSS.escape(cam.name)}"]`);
    if (!tile) {
      grid.insertAdjacentHTML("beforeend", `<div class="tile" data-camera="${esc(cam.name)}">
        <div class="img"><img class="live" alt="${esc(cam.name)}" data-seq=""></div>
        <div class="meta"><span class="name">${esc(cam.name)}</span><span class="badge state"></span>
        <span class="nums"></span><span class="events"></span></div></div>`);
      tile = grid.lastElementChild;
    }
    $(".state", tile).textContent = cam.state;
    $(".state", tile).className = `badge state ${cam.state}`;
    $(".nums", tile).textContent = `${fmt(cam.fps_processed)} fps processed · ${fmt(cam.fps_captured)} captured · ` +
      `e2e p50 ${fmt(cam.e2e_p50_ms, 0, " ms")} p95 ${fmt(cam.e2e_p95_ms, 0, " ms")} · ${cam.detections.length} detection(s)`;
    $(".events", tile).innerHTML = cam.active_events.map((e) =>
      `<a class="badge active" href="#/event/${enc(e.id)}">${esc(e.label)} ${fmt(e.top_score, 2)}</a>`).join(" ");
    const img = $("img.live", tile);
    if (cam.seq !== null && String(cam.seq) !== img.dataset.seq) {
      const next = new Image();
      next.onload = () => { img.src = next.src; img.dataset.seq = String(cam.seq); };
      next.src = `${API}/cameras/${enc(cam.name)}/latest.jpg?h=360&seq=${cam.seq}`;
    }
  }
}

// ------------------------------------------------------------------ events

function eventRow(ev) {
  const thumb = ev.snapshot ? `<img loading="lazy" alt="snapshot" src="${API}/events/${enc(ev.id)}/snapshot.jpg">` : '<img alt="">';
  return `<div class="event-row" data-id="${esc(ev.id)}">
    <a href="#/event/${enc(ev.id)}">${thumb}</a>
    <div class="info"><a href="#/event/${enc(ev.id)}"><b>${esc(ev.label)}</b> on ${esc(ev.camera)}</a>
      ${ev.type !== "end" ? '<span class="badge active">active</span>' : ""}
      <div class="sub">${when(ev.start_time)} · top score ${fmt(ev.top_score, 2)} · ${ev.frames_seen} frame(s)</div></div>
    ${feedbackControls(ev)}</div>`;
}

async function events(main, first) {
  if (first || !$("#events-list")) {
    main.innerHTML = `<h2>Events</h2><form class="filters" id="filters">
      <input name="camera" placeholder="camera" size="10"><input name="label" placeholder="label" size="10">
      <select name="verdict"><option value="">any verdict</option><option value="none">no verdict</option>
        <option value="true_alarm">true alarm</option><option value="false_alarm">false alarm</option></select>
      <input name="since" type="datetime-local" aria-label="since"><button type="submit">Filter</button></form>
      <div id="events-list"></div>`;
    $("#filters").onsubmit = (e) => { e.preventDefault(); refresh(true); };
  }
  const form = new FormData($("#filters"));
  const q = new URLSearchParams({ limit: "100" });
  for (const key of ["camera", "label", "verdict"]) if (form.get(key)) q.set(key, form.get(key));
  if (form.get("since")) q.set("since", String(new Date(form.get("since")).getTime() / 1000));
  const list = await getJson(`${API}/events?${q}`);
  const box = $("#events-list");
  const ids = list.map((e) => `${e.id}:${e.type}:${e.feedback ? e.feedback.verdict : ""}`).join(",");
  if (box.dataset.ids === ids) return; // unchanged: keep the DOM (and any open select)
  box.dataset.ids = ids;
  box.innerHTML = list.length ? list.map(eventRow).join("") : '<p class="muted">No events yet.</p>';
  wireFeedback(box);
}

// ------------------------------------------------------------------ one event

async function eventPage(main, first, id) {
  const ev = await getJson(`${API}/events/${enc(id)}`);
  const key = `${ev.type}:${ev.frames_seen}:${ev.feedback ? ev.feedback.verdict : ""}`;
  if (!first && (main.dataset.key === key || document.activeElement === $("#note"))) return; // keep a note being typed
  main.dataset.key = key;
  const rows = [["id", ev.id], ["camera", ev.camera], ["label", ev.label], ["state", ev.type],
    ["start", when(ev.start_time)], ["end", when(ev.end_time)], ["score", fmt(ev.score, 3)],
    ["top score", fmt(ev.top_score, 3)], ["box", ev.box.join(", ")], ["zones", ev.zones.join(", ") || "–"],
    ["frames seen", ev.frames_seen]];
  const timeline = ev.timeline.map((s) => `<tr><td>${esc(s.type)}</td><td>${when(s.time)}</td><td>${fmt(s.score, 2)}</td><td>${s.frames_seen}</td></tr>`).join("");
  main.innerHTML = `<h2><a href="#/events">Events</a> › ${esc(ev.label)} on ${esc(ev.camera)}</h2>
    <div class="cols"><div>${ev.snapshot ? `<img class="snap" alt="snapshot" src="${API}/events/${enc(ev.id)}/snapshot.jpg?n=${ev.frames_seen}">` : '<p class="muted">No snapshot.</p>'}
      ${ev.clip ? `<video class="snap" controls preload="none" src="${API}/events/${enc(ev.id)}/clip.mp4"></video>` : '<p class="muted">No clip for this event.</p>'}</div>
    <div><div class="card">${feedbackControls(ev)}<p><textarea id="note" rows="2" placeholder="note" style="width:100%"></textarea></p></div>
      <div class="card"><table>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table></div>
      <div class="card"><h3>Timeline</h3><table><tr><th>step</th><th>time</th><th>score</th><th>frames</th></tr>${timeline}</table></div></div></div>`;
  wireFeedback(main);
}

// ------------------------------------------------------------------ system

async function system(main) {
  const s = await getJson(`${API}/status`);
  const m = s.model || {};
  const mb = (b) => (b === null || b === undefined ? "–" : `${(b / 1048576).toFixed(1)} MiB`);
  const table = (pairs) => `<table>${pairs.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table>`;
  const changes = s.recent_changes.map((c) => `<tr><td>${when(c.time)}</td><td>${esc(c.what)}</td><td><span class="badge ${esc(c.state)}">${esc(c.state)}</span></td></tr>`).join("");
  main.innerHTML = `<h2>System</h2><div class="cols"><div>
    <div class="card"><h3>Node</h3>${table([["node", s.node], ["version", s.version], ["uptime", `${fmt(s.uptime_s / 3600, 2)} h`], ["cameras", s.cameras]])}</div>
    <div class="card"><h3>Model</h3>${table([["name", m.name], ["backend", m.backend], ["runtime", m.runtime], ["device", m.device], ["precision", m.precision], ["input", (m.input_size || []).join("×")]])}</div>
    <div class="card"><h3>Threads</h3>${table([["workers", s.threads.layout ? s.threads.layout.workers : "–"], ["batch size", s.threads.layout ? s.threads.layout.batch_size : "–"], ["threads", `${s.threads.count}: ${s.threads.names.join(", ")}`]])}</div>
    </div><div>
    <div class="card"><h3>Broker and outbox</h3>${table([["broker", s.broker.address], ["connected", s.broker.connected ? "yes" : "no"], ["outbox backlog", s.outbox.backlog]])}</div>
    <div class="card"><h3>Disk</h3>${table([["state dir", s.disk.state_dir], ["used", mb(s.disk.used_bytes)], ["free", mb(s.disk.free_bytes)], ["history", `${s.history.events} event(s), ${mb(s.history.bytes)}`]])}</div>
    <div class="card"><h3>Recent state changes</h3><table>${changes || '<tr><td class="muted">none</td></tr>'}</table></div></div></div>`;
}

// ------------------------------------------------------------------ router

async function refresh(first) {
  const hash = location.hash || "#/";
  const main = $("#main");
  const [, name, arg] = hash.match(/^#\/(\w*)\/?(.*)$/) || [];
  page = name || "overview";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (page === "event" ? "events" : page)));
  try {
    if (page === "events") await events(main, first);
    else if (page === "event") await eventPage(main, first, decodeURIComponent(arg));
    else if (page === "system") await system(main);
    else await overview(main, first);
  } catch (err) {
    setConn(false);
    if (first) main.innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
}

function start() {
  clearInterval(timer);
  refresh(true);
  timer = setInterval(() => refresh(false), POLL_MS);
}

window.addEventListener("hashchange", start);
getJson(`${API}/session`).then((s) => { session = s; $("#node").textContent = s.node; }).catch(() => setConn(false));
start();
