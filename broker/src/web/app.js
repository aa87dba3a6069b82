// The broker's web page: loads /api/things, then follows /api/events. With a command token (or
// from this machine, without tokens) every boolean field of a served thing gets a button that
// switches it through POST /api/things/NS/command. With `--history` (the session says so), each
// numeric row in view gets a sparkline of its last hour, and clicking a thing opens its chart.
"use strict";
const body = document.getElementById("things");
const status = document.getElementById("status");
const filter = document.getElementById("filter");
const rows = new Map();   // ns -> {tr, age, value, docs, ts, stale, text, data, spark, inView}
let order = [];           // namespaces, sorted

function age(secs) {
  if (!isFinite(secs)) return "?";
  if (secs < 0) return "in " + age(-secs);
  if (secs < 10) return secs.toFixed(1) + "s";
  const s = Math.floor(secs);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}

function matches(r) {
  const f = filter.value.trim().toLowerCase();
  return !f || r.ns.includes(f) || r.text.toLowerCase().includes(f);
}

function insertPosition(ns) {
  let lo = 0, hi = order.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (order[mid] < ns) lo = mid + 1; else hi = mid; }
  return lo;
}

function nsCell(ns) {
  const td = document.createElement("td");
  td.className = "ns";
  const dot = ns.lastIndexOf(".");
  if (dot > 0) {
    const p = document.createElement("span");
    p.className = "prefix";
    p.textContent = ns.slice(0, dot + 1);
    td.appendChild(p);
  }
  td.appendChild(document.createTextNode(ns.slice(dot + 1)));
  return td;
}

function newRow(ns) {
  const tr = document.createElement("tr");
  tr.dataset.ns = ns;
  tr.appendChild(nsCell(ns));
  const a = tr.appendChild(document.createElement("td")); a.className = "age";
  const v = tr.appendChild(document.createElement("td")); v.className = "value";
  const d = tr.appendChild(document.createElement("td"));
  const r = { ns, tr, age: a, value: v, docs: d, spark: null, inView: false };
  rows.set(ns, r);
  if (session.history) watcher.observe(tr);
  return r;
}

function upsert(ns, t, fresh, fragment) {
  let r = rows.get(ns);
  if (!r) {
    r = newRow(ns);
    if (fragment) {
      // The first load comes sorted: append.
      fragment.appendChild(r.tr);
      order.push(ns);
    } else {
      const at = insertPosition(ns);
      body.insertBefore(r.tr, at < order.length ? rows.get(order[at]).tr : null);
      order.splice(at, 0, ns);
    }
  }
  r.ts = t.ts;
  r.stale = !!t.stale;
  r.data = t.data;
  r.text = JSON.stringify(t.data);
  r.value.textContent = r.text;
  if (r.spark) r.value.prepend(r.spark);
  switches(r);
  const charted = numericFields(r.data).length > 0;
  r.tr.classList.toggle("charted", charted);
  r.tr.firstChild.tabIndex = charted ? 0 : -1;
  r.age.textContent = age(Date.now() / 1000 - r.ts);
  if (t.documentation_url) {
    r.docs.replaceChildren();
    // Only web links are links: a `javascript:` (or any other) URL is shown as text.
    if (/^https?:\/\//i.test(t.documentation_url)) {
      const link = document.createElement("a");
      link.href = t.documentation_url; link.textContent = "docs"; link.rel = "noopener noreferrer";
      r.docs.appendChild(link);
    } else {
      const text = document.createElement("span");
      text.className = "url"; text.textContent = t.documentation_url;
      r.docs.appendChild(text);
    }
  }
  r.tr.classList.toggle("stale", r.stale);
  if (fresh) { r.tr.classList.remove("fresh"); void r.tr.offsetWidth; r.tr.classList.add("fresh"); }
  r.tr.hidden = !matches(r);
}

// What the server says this page may do: {command: bool, served: [prefix, ...], history: bool}.
let session = { command: false, served: [], history: false };

function served(ns) {
  return session.served.some(p => p === "" || ns === p || ns.startsWith(p + "."));
}

// A button for each boolean field of a served thing, when this page may send commands.
function switches(r) {
  if (!session.command || !served(r.ns) || !r.data || typeof r.data !== "object" || Array.isArray(r.data)) return;
  const fields = document.createElement("div");
  fields.className = "fields";
  for (const [k, v] of Object.entries(r.data)) {
    if (typeof v !== "boolean") continue;
    const b = document.createElement("button");
    b.type = "button"; b.dataset.field = k; b.textContent = k + ": " + (v ? "on" : "off");
    b.classList.toggle("on", v);
    b.addEventListener("click", () => command(r.ns, { [k]: !v }));
    fields.appendChild(b);
  }
  if (fields.childElementCount) r.value.appendChild(fields);
}

async function command(ns, data) {
  status.textContent = "sending to " + ns + "…";
  try {
    const res = await fetch("api/things/" + encodeURIComponent(ns) + "/command", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data),
    });
    const reply = await res.json();
    status.textContent = reply.ok ? ns + ": done" : ns + ": " + reply.error + (reply.detail ? " (" + reply.detail + ")" : "");
  } catch (e) {
    status.textContent = ns + ": " + e;
  }
}

function markStale(ns) {
  const r = rows.get(ns);
  if (r) { r.stale = true; r.tr.classList.add("stale"); }
}

filter.addEventListener("input", () => { for (const r of rows.values()) r.tr.hidden = !matches(r); });

// Ages tick: at most 2,000 rows a second, in turn, so a big directory stays responsive.
let tickFrom = 0;
setInterval(() => {
  const now = Date.now() / 1000;
  const n = Math.min(order.length, 2000);
  for (let k = 0; k < n; k++) {
    const r = rows.get(order[(tickFrom + k) % order.length]);
    if (r && !r.tr.hidden) r.age.textContent = age(now - r.ts);
  }
  tickFrom = order.length ? (tickFrom + n) % order.length : 0;
  status.textContent = rows.size + " things" + (live ? " · live" : "");
}, 1000);

async function load() {
  try {
    const s = await fetch("api/session");
    if (s.ok) session = await s.json();
  } catch (e) { /* an older broker: no commands */ }
  const res = await fetch("api/things");
  const all = await res.json();
  const first = rows.size === 0 ? document.createDocumentFragment() : null;
  for (const [ns, t] of Object.entries(all).sort((a, b) => (a[0] < b[0] ? -1 : 1))) upsert(ns, t, false, first);
  if (first) body.appendChild(first);
  status.textContent = rows.size + " things";
}

// ---- History: sparklines in the rows, the chart of one thing ----

const SVG = "http://www.w3.org/2000/svg";
function svg(name, attrs) {
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

// The series the broker records for a thing's data (as broker/src/history/values.rs does): ""
// for a number thing, the dotted path of each number and boolean of an object.
function numericFields(data) {
  if (typeof data === "number" || typeof data === "boolean") return [""];
  const out = [];
  const walk = (o, path) => {
    if (!o || typeof o !== "object" || Array.isArray(o) || out.length >= 256) return;
    for (const [k, v] of Object.entries(o)) {
      const p = path ? path + "." + k : k;
      if (typeof v === "number" || typeof v === "boolean") out.push(p);
      else walk(v, p);
    }
  };
  walk(data, "");
  return out;
}

function rawAt(data, field) {
  let v = data;
  if (field) for (const k of field.split(".")) v = v && typeof v === "object" ? v[k] : undefined;
  return v;
}

// A field's value as the history records it (a boolean as 1/0), or null.
function valueAt(data, field) {
  const v = rawAt(data, field);
  if (typeof v === "boolean") return v ? 1 : 0;
  return typeof v === "number" && isFinite(v) ? v : null;
}

// The unit of a `value` field: the `unit` string beside it.
function unitOf(data, field) {
  const path = field ? field.split(".") : [];
  if (path.pop() !== "value") return "";
  let o = data;
  for (const k of path) o = o && typeof o === "object" ? o[k] : undefined;
  return o && typeof o.unit === "string" ? o.unit : "";
}

// The field a row's sparkline shows: the thing's own number, else `value`, else its first number.
function sparkField(data) {
  const numbers = numericFields(data).filter(f => typeof rawAt(data, f) === "number");
  if (!numbers.length) return null;
  if (numbers.includes("")) return "";
  return numbers.includes("value") ? "value" : numbers[0];
}

// GET /api/history/NS: the answer, or null when there is none (nothing recorded, history off).
async function history(ns, field, since, step) {
  let url = "api/history/" + encodeURIComponent(ns) + "?since=" + since + "&step=" + step;
  if (field) url += "&field=" + encodeURIComponent(field);
  try {
    const res = await fetch(url);
    return res.ok ? await res.json() : null;
  } catch (e) {
    return null;
  }
}

function fmt(v) {
  if (!isFinite(v)) return "?";
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? v.toExponential(3) : String(+v.toPrecision(6));
}

function pad2(n) { return String(n).padStart(2, "0"); }
function when(t) {
  const d = new Date(t * 1000);
  return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
    pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
}

// Sparklines: asked only for rows in view (or near it), a few at a time, each at most once a
// minute while it stays in view; a row with nothing in its last hour shows none.
const SPARK_EVERY = 60000;
const SPARK_PARALLEL = 4;
const sparkQueue = [];
const visible = new Set();
let sparkBusy = 0;
const watcher = new IntersectionObserver(entries => {
  for (const e of entries) {
    const r = rows.get(e.target.dataset.ns);
    if (!r) continue;
    r.inView = e.isIntersecting;
    if (r.inView) { visible.add(r); wantSpark(r); } else visible.delete(r);
  }
}, { rootMargin: "200px 0px" });

function wantSpark(r) {
  if (!session.history || !r.inView || r.sparkQueued) return;
  if (r.sparkAt && Date.now() - r.sparkAt < SPARK_EVERY) return;
  r.sparkQueued = true;
  sparkQueue.push(r);
  pumpSparks();
}

function pumpSparks() {
  while (sparkBusy < SPARK_PARALLEL && sparkQueue.length) {
    const r = sparkQueue.shift();
    r.sparkQueued = false;
    if (!r.inView || rows.get(r.ns) !== r) continue;
    sparkBusy++;
    loadSpark(r).finally(() => { sparkBusy--; pumpSparks(); });
  }
}

async function loadSpark(r) {
  r.sparkAt = Date.now();
  const field = sparkField(r.data);
  const h = field === null ? null : await history(r.ns, field, "1h", "1m");
  drawSpark(r, h);
}

function drawSpark(r, h) {
  if (r.spark) { r.spark.remove(); r.spark = null; }
  const pts = h ? h.points : [];
  r.tr.dataset.spark = pts.length ? "drawn" : "none";
  if (!pts.length) return;
  const W = 80, H = 20;
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) { lo = Math.min(lo, p.avg); hi = Math.max(hi, p.avg); }
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = t => ((t - h.since) / Math.max(h.until - h.since, 1)) * W;
  const y = v => H - 1 - ((v - lo) / (hi - lo)) * (H - 2);
  const s = svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, "aria-hidden": "true" });
  const line = pts.length === 1
    ? `${x(pts[0].t) - 1},${y(pts[0].avg)} ${x(pts[0].t) + 1},${y(pts[0].avg)}`
    : pts.map(p => `${x(p.t).toFixed(1)},${y(p.avg).toFixed(1)}`).join(" ");
  s.appendChild(svg("polyline", { points: line }));
  r.spark = s;
  r.value.prepend(s);
}

setInterval(() => { for (const r of visible) wantSpark(r); }, 15000);

// The chart: one field of one thing over a span, min–max band and avg line, live.
const STEPS = { "1h": "15s", "24h": "5m", "7d": "30m", "90d": "6h" };
const SPAN_SECS = { "1h": 3600, "24h": 86400, "7d": 604800, "90d": 7776000 };
const panel = document.getElementById("chart");
const chartTitle = document.getElementById("chart-title");
const chartField = document.getElementById("chart-field");
const chartSpans = document.getElementById("chart-spans");
const readout = document.getElementById("chart-readout");
const plot = document.getElementById("chart-plot");
const chart = { ns: null, field: null, span: "1h", h: null, gen: 0 };

function openChart(ns) {
  const r = rows.get(ns);
  if (!r) return;
  const fields = numericFields(r.data);
  if (!fields.length) return;
  chart.ns = ns;
  chartTitle.textContent = ns;
  chartField.replaceChildren();
  for (const f of fields) {
    const o = document.createElement("option");
    o.value = f; o.textContent = f || "(value)";
    chartField.appendChild(o);
  }
  const f = sparkField(r.data);
  chart.field = f !== null ? f : fields[0];
  chartField.value = chart.field;
  panel.hidden = false;
  document.body.classList.add("charting");
  loadChart();
}

async function loadChart() {
  const gen = ++chart.gen;
  chart.h = null;
  for (const b of chartSpans.querySelectorAll("button")) b.classList.toggle("on", b.dataset.span === chart.span);
  if (!session.history) {
    readout.textContent = "history is off: start the broker with --history PATH";
    plot.replaceChildren();
    return;
  }
  readout.textContent = "loading…";
  const h = await history(chart.ns, chart.field, chart.span, STEPS[chart.span]);
  if (gen !== chart.gen) return;
  const until = Date.now() / 1000;
  chart.h = h || { since: until - SPAN_SECS[chart.span], until, step: 60, points: [] };
  readout.textContent = "\u00a0";
  drawChart();
}

function closeChart() {
  panel.hidden = true;
  document.body.classList.remove("charting");
  chart.ns = null; chart.h = null; chart.gen++;
  plot.replaceChildren();
}

// Appends a live update of the charted thing to the last step (or a new one) and redraws.
function chartLive(t) {
  const h = chart.h;
  if (!h || t.ns !== chart.ns) return;
  const v = valueAt(t.data, chart.field);
  const ts = typeof t.ts === "number" ? t.ts : Date.now() / 1000;
  if (v === null) return;
  const at = Math.floor(ts / h.step) * h.step;
  const last = h.points[h.points.length - 1];
  if (last && at === last.t) {
    last.min = Math.min(last.min, v); last.max = Math.max(last.max, v);
    last.avg = (last.avg * last.n + v) / (last.n + 1); last.n++;
  } else if (!last || at > last.t) {
    h.points.push({ t: at, min: v, avg: v, max: v, n: 1 });
  } else {
    return;
  }
  if (at + h.step > h.until) {
    h.until = at + h.step;
    h.since = h.until - SPAN_SECS[chart.span];
    while (h.points.length && h.points[0].t < h.since) h.points.shift();
  }
  drawChart();
}

function drawChart() {
  const h = chart.h;
  if (!h) return;
  const W = Math.max(plot.clientWidth, 200), H = plot.clientWidth < 500 ? 180 : 220;
  const L = 52, R = 8, T = 8, B = 20;
  const pts = h.points;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  s.appendChild(svg("rect", { class: "frame", x: L, y: T, width: W - L - R, height: H - T - B }));
  if (!pts.length) {
    const e = s.appendChild(svg("text", { class: "empty", x: L + 8, y: T + 20 }));
    e.textContent = "nothing recorded in this span";
    plot.replaceChildren(s);
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) { lo = Math.min(lo, p.min); hi = Math.max(hi, p.max); }
  const v0 = hi === lo ? lo - 1 : lo, v1 = hi === lo ? hi + 1 : hi;
  const t0 = h.since, t1 = Math.max(h.until, t0 + 1);
  // The domain drawn, for whoever reads the picture back (the tests do).
  s.dataset.t0 = t0; s.dataset.t1 = t1; s.dataset.v0 = v0; s.dataset.v1 = v1;
  const x = t => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = v => H - B - ((v - v0) / (v1 - v0)) * (H - T - B);
  const xy = (t, v) => x(t).toFixed(2) + "," + y(v).toFixed(2);
  const top = pts.map(p => xy(p.t, p.max));
  const bottom = pts.map(p => xy(p.t, p.min)).reverse();
  s.appendChild(svg("polygon", { class: "band", points: top.concat(bottom).join(" ") }));
  s.appendChild(svg("polyline", { class: "avg", points: pts.map(p => xy(p.t, p.avg)).join(" ") }));
  const label = (text, attrs) => { const e = s.appendChild(svg("text", attrs)); e.textContent = text; };
  label(fmt(v1), { x: L - 4, y: T + 10, "text-anchor": "end" });
  label(fmt(v0), { x: L - 4, y: H - B, "text-anchor": "end" });
  label(when(t0), { x: L, y: H - 5 });
  label(when(t1), { x: W - R, y: H - 5, "text-anchor": "end" });
  const cursor = s.appendChild(svg("line", { class: "cursor", y1: T, y2: H - B, visibility: "hidden" }));
  const dot = s.appendChild(svg("circle", { class: "dot", r: 3, visibility: "hidden" }));
  const hit = s.appendChild(svg("rect", { class: "hit", x: L, y: 0, width: W - L - R, height: H }));
  const unit = () => { const r = rows.get(chart.ns); const u = r ? unitOf(r.data, chart.field) : ""; return u ? " " + u : ""; };
  const hover = e => {
    const box = s.getBoundingClientRect();
    const px = ((e.clientX - box.left) / box.width) * W;
    const t = t0 + ((px - L) / (W - L - R)) * (t1 - t0);
    let lo = 0, hi = pts.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (pts[mid].t < t) lo = mid + 1; else hi = mid; }
    const p = lo > 0 && t - pts[lo - 1].t < pts[lo].t - t ? pts[lo - 1] : pts[lo];
    cursor.setAttribute("x1", x(p.t)); cursor.setAttribute("x2", x(p.t));
    dot.setAttribute("cx", x(p.t)); dot.setAttribute("cy", y(p.avg));
    cursor.setAttribute("visibility", "visible"); dot.setAttribute("visibility", "visible");
    const u = unit();
    readout.textContent = when(p.t) + "  " + fmt(p.avg) + u +
      (p.min !== p.max ? "  (" + fmt(p.min) + " – " + fmt(p.max) + u + ")" : "");
  };
  hit.addEventListener("pointermove", hover);
  hit.addEventListener("pointerdown", hover);
  plot.replaceChildren(s);
}

body.addEventListener("click", e => {
  if (e.target.closest("button, a, input, select")) return;
  const tr = e.target.closest("tr");
  if (tr && tr.classList.contains("charted")) openChart(tr.dataset.ns);
});
body.addEventListener("keydown", e => {
  const tr = e.key === "Enter" && e.target.closest("td.ns") && e.target.closest("tr");
  if (tr && tr.classList.contains("charted")) openChart(tr.dataset.ns);
});
chartField.addEventListener("change", () => { chart.field = chartField.value; loadChart(); });
chartSpans.addEventListener("click", e => {
  const b = e.target.closest("button");
  if (b && chart.ns) { chart.span = b.dataset.span; loadChart(); }
});
document.getElementById("chart-close").addEventListener("click", closeChart);
document.addEventListener("keydown", e => { if (e.key === "Escape" && !panel.hidden) closeChart(); });
window.addEventListener("resize", () => { if (!panel.hidden) drawChart(); });

let live = false;

async function start() {
  await load();
  const events = new EventSource("api/events");
  events.addEventListener("update", e => { const t = JSON.parse(e.data); upsert(t.ns, t, true); chartLive(t); });
  events.addEventListener("expired", e => markStale(JSON.parse(e.data).ns));
  events.onerror = () => { live = false; status.textContent = "reconnecting…"; };
  // Whatever changed between the last load and this (re)opened stream, including while it was
  // down or dropped for lagging: load again, then the stream carries on.
  events.onopen = async () => {
    await load();
    live = true;
    status.textContent = rows.size + " things · live";
  };
}
start().catch(e => { status.textContent = "error: " + e; });
