// The Hermes gateway's dashboard: polls /v1/hermes/state every second and draws it.
// Plain DOM and SVG, no library. Everything the gateway reports that a client chose (ids,
// types, stage names) is written with textContent, never as markup.
"use strict";

const STATE_URL = "/v1/hermes/state?top=50";
const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";
const KEY_SLOT = "hermes-admin-key";

// The admin key: from the URL's fragment (#key=..., never sent to the server) or this tab's
// sessionStorage; asked for when the gateway answers 401.
function takeKeyFromFragment() {
  const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY_SLOT, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function fmt(x, digits) {
  if (x === null || x === undefined) return "–";
  return Number(x).toFixed(digits === undefined ? 2 : digits);
}

function fillTable(id, rows, cells) {
  const body = document.querySelector(`#${id} tbody`);
  const cols = document.querySelectorAll(`#${id} thead th`).length;
  body.replaceChildren();
  if (!rows.length) {
    const td = el("td", "none", "empty");
    td.colSpan = cols;
    body.append(el("tr"));
    body.lastChild.append(td);
    return;
  }
  for (const row of rows) {
    const tr = el("tr");
    for (const [value, cls] of cells(row)) tr.append(el("td", value, cls));
    body.append(tr);
  }
}

function drawUpstreams(ups) {
  fillTable("upstreams", ups, (u) => [
    [u.name],
    [u.models.join(", ")],
    [u.healthy ? "up" : "down", u.healthy ? "up" : "down"],
    [u.in_flight, "num"],
    [u.limit, "num"],
    [u.admission.kind || "–"],
    [engineText(u.engine)],
  ]);
}

// What a vLLM upstream's /metrics said at the gateway's last scrape.
function engineText(e) {
  if (!e) return "–";
  const kv = e.kv_usage === null ? "" : `, KV ${(100 * e.kv_usage).toFixed(0)} %`;
  return `${e.running} running, ${e.waiting} waiting${kv}`;
}

function drawQueue(q) {
  document.getElementById("queue-count").textContent = `(${q.count} waiting)`;
  let i = 0;
  fillTable("queue", q.calls, (c) => [
    [++i, "num"],
    [c.app_id],
    [c.app_type],
    [c.stage],
    [c.model],
    [c.slo_class + (c.aged ? ", aged" : "")],
    [fmt(c.rank, 3), "num"],
    [fmt(c.waited_s, 1), "num"],
  ]);
}

function drawApps(a) {
  document.getElementById("apps-count").textContent = `(${a.count})`;
  fillTable("apps", a.apps, (x) => [
    [x.app_id],
    [x.app_type],
    [x.stage === null ? "–" : `${x.stage} (${x.stage_kind})`],
    [x.in_flight, "num"],
    [x.calls, "num"],
    [fmt(x.attained_s), "num"],
    [fmt(x.predicted_remaining_s), "num"],
    [fmt(x.age_s, 1), "num"],
  ]);
}

// A layered layout: each stage's layer is its distance from <start>; <end> goes last. Edges
// forward in layers are straight, others (loops back) curve around.
function layout(graph) {
  const layer = new Map([["<start>", 0]]);
  const next = new Map();
  for (const e of graph.edges) {
    if (!next.has(e.source)) next.set(e.source, []);
    next.get(e.source).push(e.target);
  }
  const todo = ["<start>"];
  while (todo.length) {
    const n = todo.shift();
    for (const m of next.get(n) || []) {
      if (!layer.has(m) && m !== "<end>") {
        layer.set(m, layer.get(n) + 1);
        todo.push(m);
      }
    }
  }
  let last = 0;
  for (const node of graph.nodes) {
    if (node.name === "<end>") continue;
    if (!layer.has(node.name)) layer.set(node.name, 1);
    last = Math.max(last, layer.get(node.name));
  }
  layer.set("<end>", last + 1);
  const byLayer = [];
  for (const node of graph.nodes) {
    const l = layer.get(node.name);
    (byLayer[l] = byLayer[l] || []).push(node);
  }
  const pos = new Map();
  byLayer.forEach((nodes, l) => {
    (nodes || []).forEach((node, i) => pos.set(node.name, { x: 20 + l * 160, y: 30 + i * 56, l }));
  });
  const rows = Math.max(...byLayer.map((n) => (n ? n.length : 0)));
  return { pos, width: 40 + (last + 2) * 160, height: 40 + rows * 56 };
}

const BOX_W = 124;
const BOX_H = 28;

function drawGraph(graph, active, index) {
  const { pos, width, height } = layout(graph);
  const box = el("div", null, "graph");
  box.dataset.appType = graph.app_type;
  box.append(el("h3", `${graph.app_type}: ${graph.runs_seen} runs, ${graph.stages} stages`));
  const s = svg("svg", { width, height: height + 30, viewBox: `0 0 ${width} ${height + 30}` });
  const marker = `arrow-${index}`;
  const defs = svg("defs");
  const m = svg("marker", {
    id: marker, viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  });
  m.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a93a6" }));
  defs.append(m);
  s.append(defs);
  for (const e of graph.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) continue;
    let d;
    let lx;
    let ly;
    if (b.l === a.l + 1) {
      const [x1, y1, x2, y2] = [a.x + BOX_W, a.y + BOX_H / 2, b.x, b.y + BOX_H / 2];
      d = `M ${x1} ${y1} L ${x2} ${y2}`;
      [lx, ly] = [(x1 + x2) / 2, (y1 + y2) / 2 - 3];
    } else if (b.l > a.l) {  // over layers: around the bottom of the boxes between
      const [x1, y1, x2, y2] = [a.x + BOX_W / 2, a.y + BOX_H, b.x + BOX_W / 2, b.y + BOX_H];
      const cy = Math.max(y1, y2) + 34;
      const cx = (x1 + x2) / 2;
      d = `M ${x1} ${y1} Q ${cx} ${cy} ${x2} ${y2}`;
      [lx, ly] = [(x1 + 2 * cx + x2) / 4, (y1 + 2 * cy + y2) / 4 + 11];
    } else {  // a loop back (or to itself): around the top of the boxes
      const [x1, y1, x2, y2] = [a.x + BOX_W / 2, a.y, b.x + BOX_W / 2, b.y];
      const cy = Math.min(y1, y2) - 26;
      const cx = (x1 + x2) / 2 + (x1 === x2 ? 40 : 0);
      d = `M ${x1} ${y1} Q ${cx} ${cy} ${x2} ${y2}`;
      [lx, ly] = [(x1 + 2 * cx + x2) / 4, (y1 + 2 * cy + y2) / 4 - 2];
    }
    s.append(svg("path", { d, class: "edge", "marker-end": `url(#${marker})` }));
    s.append(svg("text", { x: lx, y: ly, class: "edge-label", "text-anchor": "middle" },
      Number(e.p).toFixed(2)));
  }
  for (const node of graph.nodes) {
    const p = pos.get(node.name);
    const terminal = node.kind === "start" || node.kind === "end";
    let cls = "node" + (terminal ? " terminal" : node.kind === "tool" ? " tool" : "");
    if (active.has(node.name)) cls += " active";
    const g = svg("g", { class: cls, "data-stage": node.name });
    g.append(svg("rect", { x: p.x, y: p.y, width: BOX_W, height: BOX_H, rx: 5 }));
    const name = node.name.length > 18 ? node.name.slice(0, 17) + "…" : node.name;
    g.append(svg("text", { x: p.x + 6, y: p.y + 18 }, name));
    const title = svg("title", {}, terminal ? node.name
      : `${node.name} (${node.kind} on ${node.backend}): ${node.visits} visits in the window, ` +
        `fan-out ${node.mean_fanout}, mean demand ${node.mean_demand}` +
        (node.kind === "llm" ? " completion tokens" : " s"));
    g.append(title);
    s.append(g);
  }
  box.append(s);
  return box;
}

function drawGraphs(graphs, apps) {
  const where = document.getElementById("graphs");
  where.replaceChildren();
  if (!graphs.length) {
    where.append(el("p", "none yet: a type's graph appears once one of its runs has finished",
      "empty"));
    return;
  }
  graphs.forEach((g, i) => {
    const active = new Set(apps.filter((a) => a.app_type === g.app_type && a.in_flight > 0)
      .map((a) => a.stage));
    where.append(drawGraph(g, active, i));
  });
}

function drawHistogram(title, h) {
  const box = el("div", null, "hist");
  box.append(el("h3", `${title}: ${h.total} in the last ${fmt(h.span_s, 0)} s`));
  box.append(el("div", "bars by upper bound, s", "hint"));
  const W = 42;
  const H = 110;
  const n = h.counts.length;
  const s = svg("svg", { width: 30 + n * W, height: H + 40 });
  const top = Math.max(1, ...h.counts);
  h.counts.forEach((c, i) => {
    const bh = Math.round((c / top) * H);
    const x = 20 + i * W;
    const bar = svg("rect", { x, y: 10 + H - bh, width: W - 6, height: bh, class: "bar" });
    bar.append(svg("title", {}, `≤ ${h.upper_bounds[i]} s: ${c}`));
    s.append(bar);
    if (c) s.append(svg("text", { x: x + (W - 6) / 2, y: 8 + H - bh, "text-anchor": "middle" }, c));
    s.append(svg("text", { x: x + (W - 6) / 2, y: H + 26, "text-anchor": "middle" },
      String(h.upper_bounds[i])));
  });
  s.append(svg("line", { x1: 16, y1: H + 10, x2: 24 + n * W, y2: H + 10, class: "axis" }));
  box.append(s);
  return box;
}

function draw(state) {
  drawUpstreams(state.upstreams);
  drawQueue(state.queue);
  drawApps(state.apps);
  drawGraphs(state.graphs, state.apps.apps);
  const hist = document.getElementById("histograms");
  hist.replaceChildren(
    drawHistogram("Time to first token (streamed calls), s", state.histograms.ttft_s),
    drawHistogram("Application completion time, s", state.histograms.act_s),
  );
}

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = error ? "status error" : "status";
}

async function poll() {
  const key = sessionStorage.getItem(KEY_SLOT);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    const r = await fetch(STATE_URL, { headers, cache: "no-store" });
    if (r.status === 401) {
      document.getElementById("key-form").hidden = false;
      setStatus(key ? "the key was refused" : "an admin key is needed", true);
      return;  // polling resumes when a key is given
    }
    if (!r.ok) throw new Error(`the gateway answered ${r.status}`);
    const state = await r.json();
    document.getElementById("key-form").hidden = true;
    draw(state);
    setStatus(`policy ${state.policy}${state.draining ? ", draining" : ""} · ` +
      `${state.queue.count} queued · ${state.apps.count} applications · ` +
      `updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    setStatus(`cannot reach the gateway (${e.message}); retrying`, true);
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromFragment();
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_SLOT, document.getElementById("key").value);
    document.getElementById("key").value = "";
    poll();
  });
  poll();
});
