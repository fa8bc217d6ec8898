// The dashboard's page: renders each snapshot of /dashboard/stream into its tables,
// tiles and two SVG charts. Every value is set as text (names come from clients and
// engines), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
let paused = false;
let latest = null;

const num = (v, digits = 0) =>
  v === null || v === undefined ? "—" : Number(v).toLocaleString("en-US", { maximumFractionDigits: digits });
const pct = (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(1) + " %");
const rate = (v) => (v === null || v === undefined ? "—" : Number(v).toFixed(2));

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, empty, build) {
  const body = $(tableId).tBodies[0];
  const fresh = document.createDocumentFragment();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, empty);
    td.colSpan = Array.from($(tableId).tHead.rows[0].cells).reduce((n, c) => n + c.colSpan, 0);
    fresh.appendChild(tr);
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    build(tr, r);
    fresh.appendChild(tr);
  }
  body.replaceChildren(fresh);
}

function meterCell(row, value, label) {
  const td = cell(row, "");
  if (value === null || value === undefined) {
    td.textContent = "—";
    return td;
  }
  const m = document.createElement("meter");
  m.min = 0; m.max = 1; m.value = value;
  m.setAttribute("aria-label", label);
  td.append(m, document.createTextNode(pct(value)));
  return td;
}

function workers(list) {
  fill("workers", list, "No workers registered.", (tr, w) => {
    tr.dataset.worker = w.id;
    tr.dataset.url = w.url;
    tr.dataset.healthy = String(w.healthy);
    const state = w.draining ? "draining" : w.healthy ? "healthy" : "unhealthy";
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = w.id;
    tr.appendChild(th);
    cell(tr, (w.models || []).join(", ") || "—", "text");
    cell(tr, w.role, "text");
    cell(tr, state, "text " + state).dataset.field = "health";
    cell(tr, w.circuit.replace("_", "-"), "text " + w.circuit).dataset.field = "circuit";
    cell(tr, num(w.in_flight)).dataset.field = "in_flight";
    cell(tr, w.engine_reachable ? num(w.engine_running) : "—").dataset.field = "engine_running";
    cell(tr, w.engine_reachable ? num(w.engine_waiting) : "—").dataset.field = "engine_waiting";
    meterCell(tr, w.kv_usage, "KV cache usage of " + w.id).dataset.field = "kv_usage";
    const hit = w.prefix_hit_rate ?? w.prefix_hit_rate_overall;
    meterCell(tr, hit, "Prefix hit rate of " + w.id).dataset.field = "prefix_hit_rate";
  });
}

function models(list) {
  fill("models", list, "No traffic yet.", (tr, m) => {
    tr.dataset.model = m.model;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = m.model;
    tr.appendChild(th);
    cell(tr, m.workers_healthy + " of " + m.workers,
      m.workers > 0 && m.workers_healthy === 0 ? "unhealthy" : "");
    cell(tr, num(m.requests)).dataset.field = "requests";
    cell(tr, rate(m.request_rate)).dataset.field = "request_rate";
    cell(tr, rate(m.error_rate)).dataset.field = "error_rate";
    for (const p of ["p50", "p95", "p99"]) cell(tr, num(m.ttft_ms[p], 1)).dataset.field = "ttft_" + p;
    for (const p of ["p50", "p95", "p99"]) cell(tr, num(m.e2e_ms[p], 1)).dataset.field = "e2e_" + p;
  });
}

function counted(id, list, first, second, empty) {
  fill(id, list, empty, (tr, r) => {
    cell(tr, r[first], "text");
    cell(tr, r[second], "text");
    cell(tr, num(r.total));
    cell(tr, rate(r.rate));
  });
}

function tenants(list) {
  fill("tenants", list, "No tenant traffic yet.", (tr, t) => {
    cell(tr, t.tenant, "text");
    for (const k of ["ok", "error", "limited", "input_tokens", "cached_tokens", "output_tokens"]) cell(tr, num(t[k] || 0));
  });
}

// A line chart of `series` ([{name, values: [number|null]}]) over the chart's points.
function chart(svgId, descId, points, series, unit) {
  const svg = $(svgId);
  const W = 480, H = 160, L = 44, R = 8, T = 8, B = 22;
  const max = Math.max(1e-9, ...series.flatMap((s) => s.values.filter((v) => v !== null)));
  const top = niceCeil(max);
  const x = (i) => L + (points.length <= 1 ? 0 : (i * (W - L - R)) / (points.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const parts = [
    el("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    el("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    el("line", { class: "axis", x1: L, y1: y(top / 2), x2: W - R, y2: y(top / 2) }),
    el("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, fmtAxis(top)),
    el("text", { x: L - 4, y: y(top / 2) + 3, "text-anchor": "end" }, fmtAxis(top / 2)),
    el("text", { x: L - 4, y: H - B + 3, "text-anchor": "end" }, "0"),
    el("text", { x: L, y: H - 6 }, points.length > 1 ? "−" + Math.round((points[points.length - 1].t - points[0].t) / 1000) + " s" : ""),
    el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"),
  ];
  series.forEach((s, k) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    });
    parts.push(el("path", { class: "s" + k, d }));
  });
  svg.replaceChildren(...parts);
  const desc = $(descId);
  desc.replaceChildren(...series.map((s, k) => {
    const last = [...s.values].reverse().find((v) => v !== null);
    const span = document.createElement("span");
    span.className = "s" + k;
    span.textContent = s.name + ": " + (last === undefined ? "no data" : num(last, 2) + " " + unit) + " now";
    return span;
  }));
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtAxis(v) {
  return v >= 1000 ? (v / 1000).toFixed(v % 1000 ? 1 : 0) + "k" : String(Number(v.toPrecision(3)));
}

function render(s) {
  const t = s.totals;
  $("total-rate").textContent = rate(t.request_rate);
  $("total-requests").textContent = num(t.requests);
  $("error-rate").textContent = rate(t.error_rate);
  $("in-flight").textContent = num(t.in_flight);
  $("queue-depth").textContent = num(t.queue_depth);
  $("retry-rate").textContent = rate(t.retry_rate);
  $("prefix-ratio").textContent = pct(t.prefix_index_hit_ratio);
  $("cache-rate").textContent = pct(t.response_cache_hit_rate);
  $("policy").textContent = s.policy;
  workers(s.workers);
  models(s.models);
  counted("decisions", s.decisions, "policy", "reason", "No routing decisions yet.");
  counted("intents", s.intents, "intent", "model", "No request was routed by intent.");
  counted("route", s.route.requests, "use_case", "path", "No /route requests yet.");
  tenants(s.tenants);
  $("sessions-created").textContent = num(s.route.sessions_created);
  $("workflows-active").textContent = num(s.workflows.active);
  $("workflows-queued").textContent = num(s.workflows.queued_messages);
  $("workflows-requests").textContent = num(s.workflows.requests);
  $("workflows-hit").textContent = pct(s.workflows.cache_hit_rate);
  chart("chart-traffic", "traffic-desc", s.chart, [
    { name: "Requests/s", values: s.chart.map((p) => p.rps) },
    { name: "Errors/s", values: s.chart.map((p) => p.eps) },
  ], "/s");
  chart("chart-latency", "latency-desc", s.chart, [
    { name: "End to end p95", values: s.chart.map((p) => p.e2e_p95_ms) },
    { name: "Time to first token p95", values: s.chart.map((p) => p.ttft_p95_ms) },
  ], "ms");
  $("updated").textContent = "Last update " + new Date(s.unix_ms).toLocaleTimeString() + ".";
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function connect() {
  const status = $("status");
  const source = new EventSource("/dashboard/stream");
  source.onopen = () => { status.textContent = "Live"; status.className = "live"; };
  source.onerror = () => { status.textContent = "Disconnected, reconnecting…"; status.className = "down"; };
  source.onmessage = (ev) => {
    latest = JSON.parse(ev.data);
    if (!paused) render(latest);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const button = $("pause");
  button.addEventListener("click", () => {
    paused = !paused;
    button.setAttribute("aria-pressed", String(paused));
    button.textContent = paused ? "Resume updates" : "Pause updates";
    if (!paused && latest) render(latest);
  });
  connect();
});
