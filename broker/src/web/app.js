// The broker's web page: loads /api/things, then follows /api/events. With a command token (or
// from this machine, without tokens) every boolean field of a served thing gets a button that
// switches it through POST /api/things/NS/command.
"use strict";
const body = document.getElementById("things");
const status = document.getElementById("status");
const filter = document.getElementById("filter");
const rows = new Map();   // ns -> {tr, age, value, docs, ts, stale, text}
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
  const r = { ns, tr, age: a, value: v, docs: d };
  rows.set(ns, r);
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
  switches(r);
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

// What the server says this page may do: {command: bool, served: [prefix, ...]}.
let session = { command: false, served: [] };

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

let live = false;

async function start() {
  await load();
  const events = new EventSource("api/events");
  events.addEventListener("update", e => { const t = JSON.parse(e.data); upsert(t.ns, t, true); });
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
