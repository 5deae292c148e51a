// edgedet fleet console: polls /api/version and redraws from /api/nodes, /api/events/active and
// /api/events when it changed. No framework, no CDN.
"use strict";
const POLL_MS = 500;
let shown = -1;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
const fmt = (v, unit) => (v == null ? "–" : `${v}${unit || ""}`);

function drawNodes(nodes) {
  const grid = document.getElementById("grid");
  grid.replaceChildren(...nodes.map((n) => {
    const state = n.online ? "online" : "offline";
    const info = n.info || {};
    const card = el("div", {class: `node ${state}${n.duplicate ? " duplicate" : ""}`, "data-node": n.node,
                            "data-state": state},
      el("h3", {}, el("span", {}, n.node), el("span", {class: "state"}, n.duplicate ? `${state} · DUPLICATE ID` : state)),
      el("div", {class: "meta"}, `${info.version || "?"} · ${info.model || "?"} · ${info.backend || "?"} ${info.precision || ""}`));
    for (const c of n.cameras) {
      const camState = c.status || "unknown";
      card.append(el("div", {class: `cam ${camState}`, "data-camera": c.camera, "data-state": camState},
        el("span", {}, c.camera), el("span", {}, `${fmt(c.fps, " fps")} · ${fmt(c.latency_ms_p50, " ms")}`),
        c.active.length ? el("span", {class: "alarm"}, c.active.join(", ")) : el("span", {}, "")));
    }
    return card;
  }));
  const online = nodes.filter((n) => n.online).length;
  document.getElementById("summary").textContent = `${online}/${nodes.length} nodes online`;
}

function drawActive(events) {
  document.querySelector("#active tbody").replaceChildren(...events.map((e) =>
    el("tr", {"data-event": e.id, "data-node": e.node}, el("td", {}, e.node), el("td", {}, e.camera),
       el("td", {}, e.label), el("td", {}, fmt(e.top_score)), el("td", {}, e.start_time))));
}

async function verdict(e, value) {
  await fetch(`/api/events/${encodeURIComponent(e.node)}/${encodeURIComponent(e.id)}/verdict`,
              {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({verdict: value})});
  shown = -1;
}

function drawHistory(events) {
  document.querySelector("#history tbody").replaceChildren(...events.map((e) => {
    const snap = e.has_snapshot
      ? el("img", {src: `/api/events/${encodeURIComponent(e.node)}/${encodeURIComponent(e.id)}/snapshot.jpg`, alt: "snapshot"})
      : "";
    const buttons = e.verdict ? e.verdict : el("span", {},
      el("button", {onclick: () => verdict(e, "true_positive")}, "real"),
      el("button", {onclick: () => verdict(e, "false_positive")}, "false alarm"));
    return el("tr", {"data-event": e.id, "data-node": e.node}, el("td", {}, e.node), el("td", {}, e.camera),
      el("td", {}, e.label), el("td", {}, e.start_time), el("td", {}, e.type), el("td", {}, snap), el("td", {}, buttons));
  }));
}

async function tick() {
  try {
    const {version} = await (await fetch("/api/version")).json();
    if (version !== shown) {
      const [nodes, active, history] = await Promise.all(
        ["/api/nodes", "/api/events/active", "/api/events?limit=50"].map((u) => fetch(u).then((r) => r.json())));
      drawNodes(nodes.nodes);
      drawActive(active);
      drawHistory(history);
      shown = version;
      document.body.dataset.version = String(version);
    }
  } catch (err) {
    document.getElementById("summary").textContent = `console error: ${err}`;
  }
  setTimeout(tick, POLL_MS);
}
tick();
