// jobforge dashboard: plain JavaScript, no build step, no network but this server.
// Live data arrives by Server-Sent Events (/api/events); everything else is the JSON API (/api).
"use strict";

const $ = (sel) => document.querySelector(sel);
const STATUSES = ["created", "queued", "running", "completed", "failed", "cancelled", "timeout"];
const FINAL = new Set(["completed", "failed", "cancelled", "timeout"]);

const state = {
  token: "",
  active: new Map(),        // id -> job summary (running jobs)
  history: { status: "", type: "", q: "", cursor: "", stack: [], next: null },
  total: null,
  detailId: null,
  detailTimer: null,
  historyTimer: null,
};

// ---- helpers ---------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}
const fmt = (n) => (n ?? 0).toLocaleString("en-US");
function ago(ms) {
  if (!ms) return "-";
  let s = (Date.now() - ms) / 1000;
  const future = s < 0; s = Math.abs(s);
  const t = s < 60 ? `${s.toFixed(0)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m`
    : s < 86400 ? `${(s / 3600).toFixed(1)}h` : `${(s / 86400).toFixed(1)}d`;
  return future ? `in ${t}` : `${t} ago`;
}
function dur(ms) {
  if (ms == null) return "-";
  const s = ms / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${Math.floor(s / 60)}m ${Math.round(s % 60)}s` : `${(s / 3600).toFixed(1)} h`;
}
function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), bad ? 6000 : 3000);
}
function progressText(j) {
  let t = `${j.progress ?? 0}%`;
  if (j.progress_total) t = `${fmt(j.progress_current)} / ${fmt(j.progress_total)} — ${t}`;
  else if (j.progress_current && j.status === "running" && !j.progress) t = `${fmt(j.progress_current)} done`;
  return t;
}
function bar(j, big = false) {
  const b = el("div", { class: `bar ${j.status}${big ? " big" : ""}` }, el("div"), el("span"));
  setBar(b, j);
  return b;
}
function setBar(b, j) {
  const pct = FINAL.has(j.status) && j.status === "completed" ? 100 : (j.progress ?? 0);
  b.className = `bar ${j.status}${b.classList.contains("big") ? " big" : ""}`;
  b.firstChild.style.width = `${pct}%`;
  b.lastChild.textContent = progressText(j);
  b.dataset.progress = String(j.progress ?? 0);
}
// Ids are time-ordered UUIDs: their start is the clock, their end tells jobs apart.
const shortId = (id) => `…${id.slice(-12)}`;
const statusSpan = (s) => el("span", { class: `st ${s}` }, s);

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  // Every request carries the token when the page has one: on a dashboard reachable from
  // other machines, reads need it too.
  if (options.auth || state.token) headers["Authorization"] = `Bearer ${state.token}`;
  const res = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty body */ }
  if (!res.ok) {
    const err = new Error((data && data.error) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

// ---- token -----------------------------------------------------------------------------------
function initToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("jobforge-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("jobforge-token") || "";
  $("#token").value = state.token;
  $("#token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("jobforge-token", state.token);
    // Reads refused without the token (a dashboard on a non-loopback address): start over.
    if (!document.body.dataset.ready) { location.reload(); return; }
    await checkToken();
  });
  checkToken();
}
async function checkToken() {
  const out = $("#token-state");
  if (!state.token) { out.textContent = "actions need the token"; return; }
  try { await api("/api/auth", { method: "POST", auth: true }); out.textContent = "✓"; }
  catch (e) { out.textContent = e.message; }
}

// ---- overview --------------------------------------------------------------------------------
function renderOverview(o) {
  $("#db").textContent = `${o.db} · v${o.version}`;
  const cards = $("#counters");
  cards.replaceChildren();
  const add = (label, value, status) => cards.append(el("div", {
    class: "card", dataset: { status: status || "" },
    onclick: () => { if (status !== undefined) { $("#f-status").value = status; applyFilters(); } },
  }, el("b", {}, value), el("span", {}, label)));
  add("total", fmt(o.stats.total), "");
  for (const s of STATUSES) if (s !== "created" || o.stats[s]) add(s, fmt(o.stats[s]), s);
  add("finished / s", o.throughput.finished_per_s.toFixed(1));
  add("enqueued / s", o.throughput.created_per_s.toFixed(1));
  $("#rate").textContent = `${o.throughput.finished_per_s.toFixed(1)} jobs/s`;
  drawSpark(o.throughput_history || []);
  renderTypes(o.types || {});
  if (state.total !== null && state.total !== o.stats.total) scheduleHistoryRefresh();
  state.total = o.stats.total;
}
function drawSpark(points) {
  const c = $("#spark"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (points.length < 2) return;
  const max = Math.max(1, ...points.map((p) => p.finished_per_s));
  g.strokeStyle = "#2f6fdb"; g.lineWidth = 1.5; g.beginPath();
  points.forEach((p, i) => {
    const x = (i / (points.length - 1)) * (c.width - 2) + 1;
    const y = c.height - 2 - (p.finished_per_s / max) * (c.height - 4);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

function renderTypes(types) {
  const names = Object.keys(types).sort();
  $("#types-panel").hidden = names.length === 0;
  const pct = (x) => (x == null ? "-" : `${(100 * x).toFixed(1)}%`);
  const ms = (x) => (x == null ? "-" : x < 1000 ? `${x.toFixed(0)} ms` : `${(x / 1000).toFixed(1)} s`);
  $("#types tbody").replaceChildren(...names.map((name) => {
    const t = types[name], c = t.counts || {};
    return el("tr", { onclick: () => { $("#f-type").value = name; applyFilters(); } },
      el("td", {}, name), el("td", {}, fmt(c.queued)), el("td", {}, fmt(c.running)),
      el("td", { class: c.failed ? "stale" : "" }, fmt(c.failed)), el("td", {}, t.runs ? ms(t.p95_run_ms) : "-"),
      el("td", {}, pct(t.error_rate)), el("td", {}, (t.completed_per_s ?? 0).toFixed(1)));
  }));
}
async function loadHealth() {
  try {
    const h = await api("/api/health");
    const pill = $("#health");
    pill.textContent = h.status;
    pill.className = `pill ${h.status === "ok" ? "on" : h.status === "degraded" ? "warn" : "off"}`;
    pill.title = h.reasons && h.reasons.length ? h.reasons.join("\n") : "healthy";
  } catch (e) { /* shown on the next try */ }
}

// ---- active jobs -----------------------------------------------------------------------------
function renderActive() {
  const body = $("#active tbody");
  const jobs = [...state.active.values()].sort((a, b) => (a.started_at || 0) - (b.started_at || 0));
  const rows = new Map([...body.children].map((tr) => [tr.dataset.id, tr]));
  for (const [id, tr] of rows) if (!state.active.has(id)) tr.remove();
  for (const j of jobs) {
    let tr = rows.get(j.id);
    if (!tr) {
      tr = el("tr", { dataset: { id: j.id }, onclick: () => openDetail(j.id) },
        el("td", { class: "id", title: j.id }, shortId(j.id)), el("td", {}, j.type), el("td"),
        el("td"), el("td"), el("td"),
        el("td", {}, el("button", { class: "danger", title: "cancel this job",
          onclick: (e) => { e.stopPropagation(); cancelJob(tr.dataset.id); } }, "cancel")));
      tr.children[2].append(bar(j));
    }
    body.append(tr); // keeps order
    setBar(tr.children[2].firstChild, j);
    const text = j.cancel_requested ? "cancel requested…" : [j.stage, j.message].filter(Boolean).join(" · ");
    tr.children[3].textContent = text;
    tr.children[3].title = text;
    tr.children[4].textContent = `${j.attempts}/${j.max_attempts ?? "?"}`;
    tr.children[5].textContent = (j.started_at ? dur(Date.now() - j.started_at) : "-") +
      (j.eta != null ? ` · ETA ${dur(j.eta * 1000)}` : "");
  }
  $("#active-count").textContent = jobs.length ? `(${jobs.length}${jobs.length >= 100 ? "+" : ""})` : "";
  $("#active-empty").hidden = jobs.length > 0;
}
function onActiveSnapshot(list) {
  const fresh = new Map();
  for (const j of list) {
    const known = state.active.get(j.id);
    // An event of this process may be newer than the store's copy: keep the larger progress.
    if (known && known.progress > j.progress && known.status === "running") j.progress = known.progress;
    fresh.set(j.id, Object.assign({}, known || {}, j));
    const tr = document.querySelector(`#history tr[data-id="${j.id}"]`);
    if (tr) updateHistoryRow(tr, j);
  }
  state.active = fresh;
  renderActive();
}
function onJobUpdates(list) {
  let historyTouched = false;
  for (const u of list) {
    if (u.status === "running") {
      const j = Object.assign(state.active.get(u.id) || { max_attempts: null, started_at: u.timestamp }, u);
      state.active.set(u.id, j);
    } else {
      state.active.delete(u.id);
    }
    const tr = document.querySelector(`#history tr[data-id="${u.id}"]`);
    if (tr) { updateHistoryRow(tr, u); historyTouched = true; }
    if (u.id === state.detailId) refreshDetail();
  }
  renderActive();
  return historyTouched;
}

// ---- history (keyset pages) ------------------------------------------------------------------
function historyRow(j) {
  const tr = el("tr", { dataset: { id: j.id }, onclick: () => openDetail(j.id) },
    el("td", { class: "id", title: j.id }, shortId(j.id)), el("td", {}, j.type),
    el("td"), el("td", {}, String(j.priority)), el("td"), el("td"),
    el("td", { title: new Date(j.created_at).toLocaleString() }, ago(j.created_at)), el("td"));
  tr.children[4].append(bar(j));
  updateHistoryRow(tr, j);
  return tr;
}
function updateHistoryRow(tr, j) {
  tr.children[2].replaceChildren(statusSpan(j.status));
  setBar(tr.children[4].firstChild, j);
  if (j.attempts != null) tr.children[5].textContent = `${j.attempts}/${j.max_attempts ?? tr.dataset.max ?? "?"}`;
  if (j.max_attempts != null) tr.dataset.max = j.max_attempts;
  const info = j.error && j.status !== "completed" ? j.error : (j.message || "");
  tr.children[7].textContent = info;
  tr.children[7].title = info;
}
async function loadHistory() {
  const h = state.history;
  const params = new URLSearchParams({ limit: "50" });
  if (h.status) params.set("status", h.status);
  if (h.type) params.set("type", h.type);
  if (h.q) params.set("q", h.q);
  if (h.cursor) params.set("cursor", h.cursor);
  try {
    const page = await api(`/api/jobs?${params}`);
    $("#history tbody").replaceChildren(...page.jobs.map(historyRow));
    h.next = page.next_cursor;
    $("#older").disabled = !page.next_cursor;
    $("#newer").disabled = $("#newest").disabled = h.stack.length === 0;
    let info = `page ${h.stack.length + 1}`;
    if (!page.jobs.length) info = "no job matches";
    if (page.searched) info += ` · looked at ${fmt(page.searched)} more jobs; “older” searches further`;
    $("#page-info").textContent = info;
  } catch (e) { toast(e.message, true); }
}
function scheduleHistoryRefresh() {
  const h = state.history;
  if (h.stack.length || h.q || state.historyTimer) return; // only the live first page follows
  state.historyTimer = setTimeout(() => { state.historyTimer = null; loadHistory(); }, 1000);
}
function applyFilters() {
  const h = state.history;
  h.status = $("#f-status").value; h.type = $("#f-type").value; h.q = $("#f-q").value.trim();
  h.cursor = ""; h.stack = [];
  loadHistory();
}
function initHistory() {
  for (const s of STATUSES) $("#f-status").append(el("option", { value: s }, s));
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
  $("#f-status").addEventListener("change", applyFilters);
  $("#f-type").addEventListener("change", applyFilters);
  $("#older").addEventListener("click", () => {
    const h = state.history; if (!h.next) return;
    h.stack.push(h.cursor); h.cursor = h.next; loadHistory();
  });
  $("#newer").addEventListener("click", () => {
    const h = state.history; if (!h.stack.length) return;
    h.cursor = h.stack.pop(); loadHistory();
  });
  $("#newest").addEventListener("click", () => { state.history.stack = []; state.history.cursor = ""; loadHistory(); });
}

// ---- detail ----------------------------------------------------------------------------------
async function openDetail(id) {
  state.detailId = id;
  await refreshDetail();
  const d = $("#detail");
  if (!d.open) d.showModal();
}
async function refreshDetail() {
  const id = state.detailId;
  if (!id) return;
  let j;
  try { j = await api(`/api/jobs/${encodeURIComponent(id)}`); }
  catch (e) { toast(e.message, true); return; }
  if (id !== state.detailId) return;
  $("#d-title").replaceChildren(`${j.type} `, el("span", { class: "id dim" }, j.id), " ", statusSpan(j.status));
  setBar($("#d-bar"), j);
  const f = $("#d-fields");
  f.replaceChildren();
  const row = (k, v) => f.append(el("dt", {}, k), el("dd", {}, v));
  row("status", j.status + (j.cancel_requested && !j.is_final ? " (cancel requested)" : ""));
  if (j.stage) row("stage", j.stage);
  row("message", j.message || "-");
  if (j.status === "running" && (j.eta != null || j.rate != null))
    row("rate", `${j.rate != null ? `${j.rate.toFixed(1)}/s` : "-"}${j.eta != null ? `, ETA ${dur(j.eta * 1000)}` : ""}`);
  row("priority", String(j.priority));
  row("attempts", `${j.attempts} of ${j.max_attempts}`);
  row("timeout", `${j.timeout} s per attempt`);
  if (j.parent_id) row("parent", j.parent_id);
  if (j.children && j.children.count) row("children", `${j.children.count} (${Object.entries(j.children.by_status).map(([s, n]) => `${n} ${s}`).join(", ")})`);
  row("created", j.created_at ? `${new Date(j.created_at).toLocaleString()} (${ago(j.created_at)})` : "-");
  if (j.run_at && j.status === "queued" && j.run_at > Date.now()) row("runs", ago(j.run_at));
  row("started", j.started_at ? new Date(j.started_at).toLocaleString() : "-");
  row("finished", j.completed_at ? new Date(j.completed_at).toLocaleString() : "-");
  if (j.duration != null) row("duration", `${j.duration.toFixed(3)} s`);
  if (j.outcome && Object.keys(j.outcome).length) row("outcome", JSON.stringify(j.outcome));
  $("#d-payload").textContent = JSON.stringify(j.payload, null, 2);
  $("#d-result-box").hidden = !(j.status === "completed" || j.result != null);
  $("#d-result").textContent = JSON.stringify(j.result, null, 2);
  $("#d-error-box").hidden = !j.error;
  $("#d-error").textContent = (j.error || "") + (j.error_detail ? `\n\n${j.error_detail}` : "");
  $("#d-logs-box").hidden = j.logs == null;
  if (j.logs) {
    $("#d-logs").textContent = j.logs.length ? j.logs.map((l) =>
      `${new Date(l.time ?? l.timestamp ?? 0).toLocaleTimeString()} ${(l.level || "").padEnd(7)} ${l.stage ? `[${l.stage}] ` : ""}${l.message}` +
      (l.context && Object.keys(l.context).length ? ` ${JSON.stringify(l.context)}` : "")).join("\n") : "(no logs)";
  }
  $("#d-cancel").disabled = j.is_final;
  $("#d-retry").disabled = !["failed", "cancelled", "timeout"].includes(j.status);
  clearTimeout(state.detailTimer);
  // Jobs of other processes reach this page through the store: follow them while they run.
  if (!j.is_final) state.detailTimer = setTimeout(refreshDetail, 1000);
}
function initDetail() {
  const d = $("#detail");
  $("#d-close").addEventListener("click", () => d.close());
  d.addEventListener("close", () => { state.detailId = null; clearTimeout(state.detailTimer); });
  $("#d-cancel").addEventListener("click", () => cancelJob(state.detailId));
  $("#d-retry").addEventListener("click", () => retryJob(state.detailId));
}

// ---- actions ---------------------------------------------------------------------------------
async function cancelJob(id) {
  try {
    const j = await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", auth: true });
    toast(j.status === "cancelled" ? `cancelled ${shortId(id)}` : `cancel requested for ${shortId(id)}`);
    if (state.detailId === id) refreshDetail();
  } catch (e) { toast(`cancel refused: ${e.message}`, true); }
}
async function retryJob(id) {
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}/retry`, { method: "POST", auth: true });
    toast(`requeued ${shortId(id)}`);
    if (state.detailId === id) refreshDetail();
    scheduleHistoryRefresh();
  } catch (e) { toast(`retry refused: ${e.message}`, true); }
}
function initActions() {
  $("#cancel-all").addEventListener("click", async () => {
    if (!confirm("Cancel every queued and running job?")) return;
    try {
      const r = await api("/api/cancel-all", { method: "POST", auth: true });
      toast(`cancelled ${fmt(r.cancelled)} jobs`);
    } catch (e) { toast(`cancel all refused: ${e.message}`, true); }
  });
  $("#enqueue").addEventListener("submit", async (e) => {
    e.preventDefault();
    let payload;
    try { payload = JSON.parse($("#e-payload").value || "null"); }
    catch (err) { $("#enqueue-state").textContent = `payload is not JSON: ${err.message}`; return; }
    const body = { type: $("#e-type").value, payload, priority: Number($("#e-priority").value) };
    const delay = Number($("#e-delay").value);
    if (delay) body.delay = delay;
    try {
      const j = await api("/api/jobs", { method: "POST", auth: true, body });
      $("#enqueue-state").textContent = `enqueued ${j.id}`;
      scheduleHistoryRefresh();
    } catch (err) { $("#enqueue-state").textContent = err.message; toast(`enqueue refused: ${err.message}`, true); }
  });
}

// ---- workers and schedules -------------------------------------------------------------------
async function loadWorkers() {
  try {
    const r = await api("/api/workers");
    $("#workers tbody").replaceChildren(...r.workers.map((w) => {
      const stale = w.state === "running" && w.heartbeat_age_s > 30;
      return el("tr", { class: `w-${w.state}`, title: `${w.id}${w.claim_mode ? `, claims ${w.claim_mode}` : ""}` },
        el("td", {}, `${w.hostname}:${w.pid}` + (w.this_process ? " (here)" : "")),
        el("td", {}, w.version), el("td", {}, w.state),
        el("td", { class: stale ? "stale" : "" }, `${w.heartbeat_age_s}s ago`),
        el("td", {}, String(w.running_jobs)));
    }));
  } catch (e) { /* shown on the next try */ }
}
async function loadSchedules() {
  try {
    const r = await api("/api/schedules");
    const when = (ms) => ms ? `${new Date(ms).toLocaleString()} (${ago(ms)})` : "never";
    $("#schedules tbody").replaceChildren(...r.schedules.map((s) =>
      el("tr", { dataset: { name: s.name }, title: `payload ${JSON.stringify(s.payload)}, queue ${s.queue}, priority ${s.priority ?? "default"}` + (s.last_job_id ? `, last job ${s.last_job_id}` : "") },
        el("td", {}, s.name), el("td", { class: "id" }, s.cron), el("td", {}, s.type),
        el("td", {}, when(s.next_fire_at)), el("td", {}, when(s.last_fire_at)),
        el("td", {}, s.timezone), el("td", {}, s.misfire))));
    $("#schedules-empty").hidden = r.schedules.length > 0;
  } catch (e) { /* shown on the next try */ }
}
async function loadTypes() {
  const r = await api("/api/types");
  const keep = $("#f-type").value;
  $("#f-type").replaceChildren(el("option", { value: "" }, "any type"), ...r.types.map((t) => el("option", { value: t }, t)));
  $("#f-type").value = keep;
  const ek = $("#e-type").value;
  $("#e-type").replaceChildren(...r.types.map((t) => el("option", { value: t }, t + (r.processors.includes(t) ? "" : " (store)"))));
  if (ek) $("#e-type").value = ek;
}

// ---- live feed -------------------------------------------------------------------------------
function connect() {
  // An EventSource cannot send headers: the token goes in the query (needed only when reads
  // need it; the server then reads it there).
  const source = new EventSource(state.token ? `/api/events?token=${encodeURIComponent(state.token)}` : "/api/events");
  const live = $("#live");
  source.onopen = () => { live.textContent = "live"; live.className = "pill on"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "pill off"; };
  source.addEventListener("overview", (e) => renderOverview(JSON.parse(e.data)));
  source.addEventListener("active", (e) => onActiveSnapshot(JSON.parse(e.data)));
  source.addEventListener("jobs", (e) => onJobUpdates(JSON.parse(e.data)));
  source.addEventListener("logs", (e) => {
    if (JSON.parse(e.data).some((l) => l.job_id === state.detailId)) {
      clearTimeout(state.logTimer);
      state.logTimer = setTimeout(refreshDetail, 200); // a burst of lines, one refresh
    }
  });
  return source;
}

async function main() {
  initToken(); initHistory(); initDetail(); initActions();
  const t0 = performance.now();
  const [overview, active] = await Promise.all([api("/api/overview"), api("/api/active"), loadTypes(), loadHistory(), loadWorkers()]);
  renderOverview(overview);
  onActiveSnapshot(active.jobs);
  document.body.dataset.ready = String(Math.round(performance.now() - t0));
  document.body.dataset.readyAt = String(Math.round(performance.now())); // since navigation
  connect();
  loadSchedules();
  loadHealth();
  setInterval(loadWorkers, 5000);
  setInterval(loadHealth, 5000);
  setInterval(loadSchedules, 5000);
  setInterval(loadTypes, 30000);
  setInterval(renderActive, 1000); // "running for" clocks
}
main().catch((e) => toast(e.message, true));
