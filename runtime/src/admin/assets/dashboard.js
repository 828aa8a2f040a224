// The Quark node dashboard. Polls /quark/status, /quark/shards and /quark/load every POLL_MS
// while the page is visible (nothing when hidden or closed), and turns counter deltas into
// rates.
"use strict";
const POLL_MS = 1000;
const HISTORY = 120; // points of the messages/s sparkline
let prev = null; // the last /quark/shards report
let prevLoad = null; // the last /quark/load report
let polls = 0;
let timer = null;
let busy = false; // a poll is in flight (at most one at a time)
const history = [];

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }));
const rate = (now, before, secs) => (before === undefined || secs <= 0 ? null : Math.max(0, (now - before) / secs));

function cell(tr, text, attrs) {
  const td = document.createElement("td");
  td.textContent = text;
  if (attrs) for (const [k, v] of Object.entries(attrs)) td.setAttribute(k, v);
  tr.appendChild(td);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// Messages per second of `kind` (tells and asks) between two polls.
function kindRate(s, b, kind, secs) {
  const now = s.messages[kind], was = (b.messages || {})[kind];
  if (!was) return null;
  return rate(now.tells + now.asks, was.tells + was.asks, secs);
}

// The p-quantile (0..1) of the asks between two polls, from the power-of-two µs buckets:
// the upper bound of the bucket that reaches it ("> 2^(n-2)" for the last one).
function quantile(now, was, p) {
  if (!was) return null;
  const d = now.map((n, i) => n - (was[i] || 0));
  const total = d.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  let seen = 0;
  for (let i = 0; i < d.length; i++) {
    seen += d[i];
    if (seen >= p * total) return i === d.length - 1 ? Infinity : 2 ** i;
  }
  return Infinity;
}

function micros(us) {
  if (us === null) return "–";
  if (us === Infinity) return "> 16 s";
  return us >= 1e6 ? `≤ ${fmt(us / 1e6)} s` : us >= 1000 ? `≤ ${fmt(us / 1000)} ms` : `≤ ${us} µs`;
}

function duration(secs) {
  const s = Math.floor(secs);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

function renderStatus(st) {
  $("node-title").textContent = st.node_id === null ? "standalone node" : `node ${st.node_id}`;
  $("node-id").textContent = st.node_id === null ? "standalone" : st.node_id;
  $("node-state").textContent = st.state;
  $("node-state").className = "state " + st.state;
  $("node-version").textContent = st.app_version ? `${st.app_version} (quark ${st.version})` : st.version;
  $("node-uptime").textContent = duration(st.uptime_seconds);
  $("node-listen").textContent = st.cluster_listen || "–";
  $("shard-count").textContent = st.shards.length;
  $("rss-mib").textContent = st.rss_bytes == null ? "–" : fmt(st.rss_bytes / 1048576);
  const cores = new Map(st.shards.map((s) => [s.shard, s]));
  const peers = st.peers.map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.node = p.node_id;
    cell(tr, p.node_id);
    cell(tr, p.addr);
    cell(tr, p.state || "–", { class: "peer-state " + (p.state || "") });
    cell(tr, p.app_version || "–", { class: "peer-version" });
    cell(tr, p.links_up == null ? "–" : `${p.links_up} / ${st.shards.length}`, { class: "peer-links" });
    return tr;
  });
  fill(document.querySelector("#peers tbody"), peers);
  $("peers").hidden = peers.length === 0;
  $("peers-none").hidden = peers.length > 0;
  return [cores, peers];
}

function renderShards(rep, cores) {
  const secs = prev ? rep.uptime_seconds - prev.uptime_seconds : 0;
  const before = new Map((prev ? prev.shards : []).map((s) => [s.shard, s]));
  let live = 0, msgs = 0, msgRate = 0, pollRate = 0, appendRate = 0, haveRate = false;
  const loadRows = [], logRows = [], outRows = [];
  const jobTotals = new Map();
  const types = new Map(), typeTotals = new Map();
  let anyJobs = false;
  for (const s of rep.shards) {
    const b = before.get(s.shard) || {};
    const info = cores.get(s.shard) || {};
    const mr = rate(s.ring_messages_in, b.ring_messages_in, secs);
    const pr = rate(s.task_polls, b.task_polls, secs);
    const kr = rate(s.parks, b.parks, secs);
    live += s.live_activations;
    msgs += s.ring_messages_in;
    if (mr !== null) { msgRate += mr; pollRate += pr; haveRate = true; }
    const tr = document.createElement("tr");
    tr.dataset.shard = s.shard;
    cell(tr, s.shard);
    cell(tr, info.core ?? "–");
    cell(tr, info.driver ?? "–");
    cell(tr, fmt(s.live_activations), { class: "live" });
    for (const kind of ["local", "cross_shard", "remote", "external"]) {
      cell(tr, fmt(kindRate(s, b, kind, secs)), { "data-kind": kind });
    }
    cell(tr, micros(quantile(s.ask_latency_buckets, b.ask_latency_buckets, 0.5)), { class: "p50" });
    cell(tr, micros(quantile(s.ask_latency_buckets, b.ask_latency_buckets, 0.99)), { class: "p99" });
    cell(tr, fmt(s.mailbox_depth));
    cell(tr, fmt(s.mailbox_depth_max));
    cell(tr, fmt(pr));
    cell(tr, fmt(kr));
    cell(tr, fmt(s.calls_in_flight));
    cell(tr, fmt(s.credit_waits));
    cell(tr, fmt(s.panics));
    cell(tr, s.net_frames_in === null ? "–" : fmt(rate(s.net_frames_in, b.net_frames_in, secs)));
    cell(tr, s.net_frames_out === null ? "–" : fmt(rate(s.net_frames_out, b.net_frames_out, secs)));
    cell(tr, info.state_bytes === undefined ? "–" : fmt(info.state_bytes), { class: "state-bytes" });
    loadRows.push(tr);
    if (s.log) {
      const l = s.log, bl = b.log || {};
      const r = document.createElement("tr");
      r.dataset.shard = s.shard;
      cell(r, s.shard);
      cell(r, fmt(l.next_lsn), { class: "next-lsn" });
      cell(r, fmt(l.next_lsn - l.acked_lsn));
      cell(r, fmt(l.acked_lsn - l.synced_lsn));
      const ar = rate(l.appends, bl.appends, secs);
      if (ar !== null) appendRate += ar;
      cell(r, fmt(ar), { class: "append-rate" });
      const br = rate(l.appended_bytes, bl.appended_bytes, secs);
      cell(r, fmt(br === null ? null : br / 1024));
      cell(r, fmt(rate(l.fsyncs, bl.fsyncs, secs)));
      cell(r, l.flushes ? fmt(l.flushed_batches / l.flushes) : "–");
      const j = s.journal, bj = b.journal || {};
      cell(r, j ? fmt(rate(j.persists, bj.persists, secs)) : "–");
      cell(r, j ? fmt(j.snapshots) : "–");
      const lags = j ? Object.values(j.projection_lag) : [];
      cell(r, lags.length ? fmt(Math.max(...lags)) : "–", { class: "projection-lag" });
      cell(r, fmt(l.segments));
      cell(r, fmt(l.disk_bytes / 1048576));
      cell(r, fmt(l.recovery_us / 1000));
      logRows.push(r);
    }
    for (const [t, n] of Object.entries(s.live_per_type)) {
      const e = types.get(t) || [];
      e.push(`${s.shard}: ${n}`);
      types.set(t, e);
      typeTotals.set(t, (typeTotals.get(t) || 0) + n);
    }
    if (s.jobs) {
      anyJobs = true;
      for (const [k, v] of Object.entries(s.jobs)) jobTotals.set(k, (jobTotals.get(k) || 0) + v);
    }
    if (s.outbox) {
      const o = s.outbox, bo = b.outbox || {};
      const r = document.createElement("tr");
      r.dataset.shard = s.shard;
      cell(r, s.shard);
      cell(r, fmt(o.delivered));
      cell(r, fmt(rate(o.delivered, bo.delivered, secs)));
      cell(r, fmt(o.duplicates));
      cell(r, fmt(o.retries));
      cell(r, fmt(o.pending));
      cell(r, fmt(o.pending_bytes / 1024));
      cell(r, fmt(o.dead_letters));
      outRows.push(r);
    }
  }
  $("total-live").textContent = live;
  $("total-msgs").textContent = msgs;
  $("total-append-rate").textContent = haveRate ? fmt(appendRate) : "…";
  $("total-msg-rate").textContent = haveRate ? fmt(msgRate) : "…";
  $("total-poll-rate").textContent = haveRate ? fmt(pollRate) : "…";
  fill(document.querySelector("#shards tbody"), loadRows);
  fill(document.querySelector("#actor-types tbody"), [...typeTotals.keys()].sort().map((t) => {
    const tr = document.createElement("tr");
    tr.dataset.type = t;
    cell(tr, t);
    cell(tr, fmt(typeTotals.get(t)), { class: "type-live" });
    cell(tr, types.get(t).join(" · "));
    return tr;
  }));
  fill(document.querySelector("#logs tbody"), logRows);
  $("log-none").hidden = logRows.length > 0 || rep.shards.length === 0;
  fill(document.querySelector("#outboxes tbody"), outRows);
  $("outbox-none").hidden = outRows.length > 0 || rep.shards.length === 0;
  const head = document.querySelector("#job-states thead tr");
  const body = document.querySelector("#job-states tbody");
  if (anyJobs) {
    const order = ["blocked", "scheduled", "queued", "running", "completed", "cancelled", "dead"];
    const names = [...order.filter((n) => jobTotals.has(n)), ...[...jobTotals.keys()].filter((n) => !order.includes(n))];
    head.replaceChildren(...names.map((n) => { const th = document.createElement("th"); th.textContent = n; return th; }));
    const tr = document.createElement("tr");
    for (const n of names) cell(tr, fmt(jobTotals.get(n)), { "data-state": n });
    body.replaceChildren(tr);
  } else {
    head.replaceChildren();
    body.replaceChildren();
  }
  $("jobs-none").hidden = anyJobs || rep.shards.length === 0;
  if (haveRate) {
    history.push(msgRate);
    if (history.length > HISTORY) history.shift();
    const max = Math.max(1, ...history);
    const pts = history.map((v, i) => `${(i * 300) / (HISTORY - 1)},${40 - (v / max) * 38}`).join(" ");
    document.querySelector("#spark polyline").setAttribute("points", pts);
  }
}

// Quantiles come precomputed (bucket upper bounds, µs) in /quark/load.
function renderLoad(ld, peers) {
  const secs = prevLoad ? ld.uptime_seconds - prevLoad.uptime_seconds : 0;
  const was = new Map((prevLoad ? prevLoad.types : []).map((t) => [t.actor_type, t]));
  $("sample-every").textContent = ld.sample_every;
  fill(document.querySelector("#type-calls tbody"), ld.types.map((t) => {
    const tr = document.createElement("tr");
    tr.dataset.type = t.actor_type;
    cell(tr, t.actor_type);
    cell(tr, fmt(t.handled), { class: "handled" });
    cell(tr, fmt(rate(t.handled, (was.get(t.actor_type) || {}).handled, secs)), { class: "call-rate" });
    cell(tr, t.p50_us === null ? "–" : micros(t.p50_us), { class: "turn-p50" });
    cell(tr, t.p99_us === null ? "–" : micros(t.p99_us), { class: "turn-p99" });
    cell(tr, t.mean_us === null ? "–" : `${fmt(t.mean_us)} µs`);
    cell(tr, fmt(t.sampled), { class: "sampled" });
    return tr;
  }));
  $("top-window").textContent = ld.top_actors.length ? "(last 10–20 s)" : "";
  fill(document.querySelector("#top-actors tbody"), ld.top_actors.map((a) => {
    const tr = document.createElement("tr");
    cell(tr, a.actor, { class: "actor" });
    cell(tr, a.shard);
    cell(tr, fmt(a.messages_est), { class: "top-msgs" });
    cell(tr, fmt(a.per_second_est));
    return tr;
  }));
  $("top-none").hidden = ld.top_actors.length > 0 || !!ld.error;
  const byMemory = ld.top_actors_by_memory || [];
  fill(document.querySelector("#top-memory tbody"), byMemory.map((a) => {
    const tr = document.createElement("tr");
    cell(tr, a.actor, { class: "actor" });
    cell(tr, a.shard);
    cell(tr, fmt(a.bytes), { class: "top-bytes" });
    cell(tr, `${fmt(a.age_ms / 1000)} s ago`);
    return tr;
  }));
  $("top-memory-none").hidden = byMemory.length > 0 || !!ld.error;
  const wasEdge = new Map((prevLoad ? prevLoad.edges : []).map((e) => [`${e.caller}>${e.callee}`, e.messages_est]));
  fill(document.querySelector("#call-edges tbody"), ld.edges.map((e) => {
    const tr = document.createElement("tr");
    tr.dataset.edge = `${e.caller}>${e.callee}`;
    cell(tr, e.caller);
    cell(tr, e.callee);
    cell(tr, fmt(e.messages_est), { class: "edge-msgs" });
    cell(tr, fmt(rate(e.messages_est, wasEdge.get(`${e.caller}>${e.callee}`), secs)));
    return tr;
  }));
  $("edges-none").hidden = ld.edges.length > 0 || !!ld.error;
  drawGraph(ld.edges);
  // The shard matrix: requests per second (totals before the second poll).
  const n = ld.shard_matrix.length;
  const head = document.querySelector("#shard-matrix thead tr");
  const hs = ["from \\ to", ...ld.shard_matrix.map((_, i) => `shard ${i}`)].map((t) => { const th = document.createElement("th"); th.textContent = t; return th; });
  head.replaceChildren(...hs);
  fill(document.querySelector("#shard-matrix tbody"), ld.shard_matrix.map((row, from) => {
    const tr = document.createElement("tr");
    tr.dataset.shard = from;
    cell(tr, `shard ${from}`);
    row.slice(0, n).forEach((v, to) => {
      const before = prevLoad && prevLoad.shard_matrix[from] ? prevLoad.shard_matrix[from][to] : undefined;
      const r = rate(v, before, secs);
      cell(tr, from === to ? "·" : fmt(r === null ? v : r), { "data-total": v });
    });
    return tr;
  }));
  const wasNode = new Map((prevLoad ? prevLoad.to_nodes : []).map((t) => [t.node, t.requests]));
  fill(document.querySelector("#node-traffic tbody"), ld.to_nodes.map((t) => {
    const tr = document.createElement("tr");
    cell(tr, t.node);
    cell(tr, fmt(t.requests), { class: "node-requests" });
    cell(tr, fmt(rate(t.requests, wasNode.get(t.node), secs)));
    return tr;
  }));
  // RTT and traffic per peer, in the cluster panel's peers table.
  const rtt = new Map();
  for (const p of ld.peer_rtt) {
    const e = rtt.get(p.node);
    if (!e || p.rtt_us < e.rtt_us) rtt.set(p.node, p);
  }
  for (const tr of peers) {
    const node = Number(tr.dataset.node);
    const p = rtt.get(node);
    cell(tr, p ? micros(p.rtt_us).replace("≤ ", "") : "–", { class: "rtt" });
    cell(tr, p ? micros(p.rttvar_us).replace("≤ ", "") : "–");
    cell(tr, fmt(rate((ld.to_nodes.find((t) => t.node === node) || {}).requests, wasNode.get(node), secs)));
  }
  renderMemory(ld.memory);
  renderLocality(ld.locality);
  const o = ld.otlp;
  const body = document.querySelector("#otlp tbody");
  if (o) {
    const tr = document.createElement("tr");
    cell(tr, fmt(o.spans_queued));
    cell(tr, fmt(o.spans_exported), { class: "otlp-exported" });
    cell(tr, fmt(o.spans_dropped_queue_full));
    cell(tr, fmt(o.spans_failed));
    body.replaceChildren(tr);
  } else {
    body.replaceChildren();
  }
  $("otlp").hidden = !o;
  $("otlp-none").hidden = !!o;
}

// The node's memory (/quark/load's `memory`, docs/MEMORY.md): limit, pressure, level,
// growth, the monitor's moves, and per shard its counted bytes, limit, level and refusals.
function renderMemory(m) {
  $("mem-none").hidden = !!m;
  $("mem-shards").hidden = !m;
  if (!m) return;
  const mib = (b) => (b == null ? "–" : fmt(b / 1048576));
  $("mem-limit").textContent = mib(m.limit_bytes);
  $("mem-limit-source").textContent = m.limit_source === "none" ? "no limit known" : "from " + m.limit_source;
  $("mem-pressure").textContent = m.pressure == null ? "–" : (100 * m.pressure).toFixed(1) + " %";
  const level = $("mem-level");
  level.textContent = m.level;
  level.className = "value level " + m.level;
  $("mem-growth").textContent = fmt(m.growth_bytes_per_sec / 1024);
  $("mem-moves").textContent = fmt(m.moves);
  $("mem-node-moves").textContent = fmt(m.node_moves);
  $("mem-leaks").textContent = fmt(m.leaks);
  fill(document.querySelector("#mem-shards tbody"), m.shards.map((s) => {
    const tr = document.createElement("tr");
    cell(tr, String(s.shard));
    cell(tr, mib(s.bytes));
    cell(tr, mib(s.limit_bytes));
    cell(tr, s.level, { class: "level " + s.level });
    cell(tr, s.refusing ? "yes" : "no");
    return tr;
  }));
}

// The locality repartitioner (/quark/load's `locality`, docs/LOCALITY.md): its counters and
// the last round's heaviest actor pairs, marked when they cross shards.
function renderLocality(l) {
  $("loc-none").hidden = !!l;
  $("loc-pairs").hidden = !l;
  if (!l) return;
  $("loc-rounds").textContent = fmt(l.rounds);
  $("loc-moves").textContent = fmt(l.moves);
  $("loc-failed").textContent = fmt(l.moves_failed);
  $("loc-skipped").textContent = fmt(l.moves_skipped_cooldown);
  $("loc-skipped-memory").textContent = fmt(l.moves_skipped_memory);
  $("loc-last").textContent = fmt(l.last_round);
  $("loc-last-moves").textContent = fmt(l.last_round_moves);
  $("loc-last-saved").textContent = fmt(l.last_round_saved);
  const shard = (s) => (s == null ? "?" : String(s));
  fill(document.querySelector("#loc-pairs tbody"), l.top_pairs.map((p) => {
    const tr = document.createElement("tr");
    cell(tr, p.from);
    cell(tr, p.to);
    cell(tr, fmt(p.messages_est));
    cell(tr, shard(p.from_shard) + (p.crossing ? " → " : " = ") + shard(p.to_shard), p.crossing ? { class: "level warning" } : undefined);
    return tr;
  }));
}

// The type graph: types on a circle, an arrow per edge, its width by messages.
function drawGraph(edges) {
  const svg = $("graph-svg");
  const ns = "http://www.w3.org/2000/svg";
  const names = [...new Set(edges.flatMap((e) => [e.caller, e.callee]))].sort();
  const pos = new Map(names.map((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, names.length) - Math.PI / 2;
    return [n, [210 + 150 * Math.cos(a), 110 + 80 * Math.sin(a)]];
  }));
  const max = Math.max(1, ...edges.map((e) => e.messages_est));
  const kids = [];
  for (const e of edges) {
    const [x1, y1] = pos.get(e.caller), [x2, y2] = pos.get(e.callee);
    const p = document.createElementNS(ns, "path");
    p.setAttribute("d", e.caller === e.callee
      ? `M${x1 - 8},${y1 - 12} C${x1 - 30},${y1 - 50} ${x1 + 30},${y1 - 50} ${x1 + 8},${y1 - 12}`
      : `M${x1},${y1} L${x2},${y2}`);
    p.setAttribute("stroke-width", 1 + 5 * (e.messages_est / max));
    kids.push(p);
  }
  for (const n of names) {
    const [x, y] = pos.get(n);
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", 12);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y + 26);
    t.textContent = n;
    kids.push(c, t);
  }
  svg.replaceChildren(...kids);
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function poll() {
  timer = null;
  busy = true;
  try {
    const [st, rep, ld] = await Promise.all([getJson("/quark/status"), getJson("/quark/shards"), getJson("/quark/load")]);
    const [cores, peers] = renderStatus(st);
    renderShards(rep, cores);
    renderLoad(ld, peers);
    prev = rep;
    prevLoad = ld;
    polls += 1;
    $("polls").textContent = polls;
    const err = $("poll-error");
    err.hidden = !(rep.error || ld.error);
    err.textContent = rep.error || ld.error || "";
  } catch (e) {
    const err = $("poll-error");
    err.hidden = false;
    err.textContent = String(e.message || e);
  }
  busy = false;
  schedule(POLL_MS);
}

function schedule(delayMs) {
  if (timer === null && !busy && !document.hidden) timer = setTimeout(poll, delayMs);
}

// Hidden (another tab, minimised): stop polling; the next poll starts afresh on return (rates
// need two polls again, so a stale baseline is not mixed in).
document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    prev = null;
    prevLoad = null;
  } else {
    schedule(0);
  }
});
schedule(0);
