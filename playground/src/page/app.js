// The playground's page: follows /events (one snapshot a second), draws the servers'
// rows and the charts, and sends the buttons' actions to /api as JSON.
"use strict";

const HISTORY = 60; // seconds kept in the charts
const COLORS = ["#2f62d9", "#d9822f", "#1f8a4c", "#b03fbf", "#c62d2d", "#2fa8b8",
                "#7a6a1f", "#5b6478", "#e05a9b", "#4f9d2f", "#8a4cd9", "#9b5a2f"];

const $ = (id) => document.getElementById(id);
const history = []; // snapshots, oldest first
let lastEvent = 0;

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function show(kind, text) {
  const other = kind === "error" ? "message" : "error";
  $(other).hidden = true;
  const box = $(kind);
  box.textContent = text;
  box.hidden = false;
  clearTimeout(box.timer);
  box.timer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 12000 : 5000);
}

// POST /api/<path> with a JSON body; shows the answer's message or error.
async function post(path, body = {}) {
  try {
    const response = await fetch("/api/" + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) {
      show("error", answer.error || response.statusText);
      return null;
    }
    if (answer.message) show("message", answer.message);
    return answer;
  } catch (err) {
    show("error", "the playground did not answer: " + err);
    return null;
  }
}

// ---- the servers' table -------------------------------------------------------------

function row(server) {
  let tr = document.querySelector(`#servers tr[data-id="${server.id}"]`);
  if (tr) return tr;
  tr = el("tr", { "data-id": server.id });
  for (const name of ["id", "address", "process", "state", "health", "rate", "share",
                      "in-flight", "mean", "weight"]) {
    tr.append(el("td", { class: name }));
  }
  const actions = el("td", { class: "actions" });
  const kill = el("button", { class: "kill", type: "button" }, "kill");
  kill.onclick = () => post(`servers/${server.id}/kill`);
  const restart = el("button", { class: "restart", type: "button" }, "restart");
  restart.onclick = () => post(`servers/${server.id}/restart`);
  const drain = el("button", { class: "drain", type: "button" }, "drain");
  drain.onclick = () => post(`servers/${server.id}/${drain.dataset.undrain ? "undrain" : "drain"}`);
  const latency = el("input", { class: "latency", type: "text", value: "100ms",
                                "aria-label": "latency to add" });
  const slow = el("button", { class: "slow", type: "button" }, "slow");
  slow.onclick = () => post(`servers/${server.id}/latency`, { latency: latency.value.trim() });
  actions.append(kill, restart, drain, latency, slow);
  tr.append(actions);
  for (const c of ["rate", "in-flight", "mean", "weight"]) tr.querySelector("." + c).classList.add("num");
  $("servers").tBodies[0].append(tr);
  return tr;
}

function renderServers(snapshot) {
  $("servers").classList.toggle("hidden-col", !snapshot.policy.uses_weights);
  snapshot.servers.forEach((s, i) => {
    const tr = row(s);
    const set = (cls, text) => { tr.querySelector("." + cls).textContent = text; };
    set("id", s.id);
    set("address", s.pid ? `${s.address} (pid ${s.pid})` : s.address);
    const processCell = tr.querySelector(".process");
    processCell.textContent = s.process + (s.added_latency_ms > 0 ? `, +${s.added_latency_ms} ms` : "");
    processCell.className = "process process-" + s.process.split(" ")[0];
    const state = tr.querySelector(".state");
    state.textContent = s.state + (s.ejected ? ", ejected" : "");
    state.className = "state state-" + s.state;
    state.title = s.last_error || "";
    const health = tr.querySelector(".health");
    health.textContent = s.health + (s.draining ? " (drained)" : "");
    health.className = "health health-" + s.health;
    set("rate", s.calls_per_sec);
    const share = tr.querySelector(".share");
    share.replaceChildren();
    const bar = el("span", { class: "bar" });
    bar.style.width = Math.round(s.share * 120) + "px";
    bar.style.background = COLORS[i % COLORS.length];
    share.append(bar, document.createTextNode(` ${(s.share * 100).toFixed(0)} %`));
    set("in-flight", s.in_flight);
    set("mean", s.mean_ms == null ? "–" : s.mean_ms.toFixed(2));
    set("weight", s.weight);
    const running = s.process === "running";
    tr.querySelector(".kill").disabled = !running;
    tr.querySelector(".restart").disabled = running;
    tr.querySelector(".slow").disabled = !running;
    const drain = tr.querySelector(".drain");
    drain.disabled = !running;
    drain.textContent = s.draining ? "undrain" : "drain";
    drain.dataset.undrain = s.draining ? "1" : "";
  });
}

// ---- charts -------------------------------------------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Lines over the last HISTORY seconds: series = [{name, color, values: [v per snapshot
// in history]}]; a null is a gap in the line.
function lineChart(svg, series, unit) {
  const W = 600, H = 220, L = 46, R = 120, T = 10, B = 24;
  svg.replaceChildren();
  const n = history.length;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v != null))));
  // By each snapshot's own time: the newest at the right edge, HISTORY seconds across,
  // so that a missed second (a reconnect, a sleeping tab) leaves a gap, not a squeeze.
  const now = n ? history[n - 1].t : 0;
  const x = (i) => W - R - (W - L - R) * (now - history[i].t) / HISTORY;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (const f of [0, 0.5, 1]) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: "axis" }));
    svg.append(svgEl("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end" }, `${+(max * f).toFixed(2)}`));
  }
  svg.append(svgEl("text", { x: L, y: H - 6 }, `−${HISTORY} s`));
  svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, `−${HISTORY / 2} s`));
  svg.append(svgEl("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
  series.forEach((s, k) => {
    let d = "";
    let pen = "M";
    s.values.forEach((v, i) => {
      if (v == null || now - history[i].t > HISTORY) { pen = "M"; return; }
      d += `${pen}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
    });
    if (d) svg.append(svgEl("path", { d, fill: "none", stroke: s.color, "stroke-width": 2,
                                        "stroke-dasharray": s.dash || "" }));
    const last = s.values[s.values.length - 1];
    svg.append(svgEl("rect", { x: W - R + 10, y: T + k * 16, width: 10, height: 10, fill: s.color }));
    svg.append(svgEl("text", { x: W - R + 24, y: T + k * 16 + 9 },
                     `${s.name} ${last == null ? "" : +last.toFixed(2)}${unit}`));
  });
}

function renderCharts(snapshot) {
  const servers = snapshot.servers;
  lineChart($("rate-chart"), servers.map((s, i) => ({
    name: `#${s.id}`,
    color: COLORS[i % COLORS.length],
    values: history.map((h) => {
      const r = h.servers.find((x) => x.id === s.id);
      return r ? r.calls_per_sec : null;
    }),
  })), "/s");
  lineChart($("latency-chart"), [
    { name: "p50", color: "#2f62d9", values: history.map((h) => h.second.ok ? h.second.p50_ms : null) },
    { name: "p99", color: "#c62d2d", values: history.map((h) => h.second.ok ? h.second.p99_ms : null) },
  ], " ms");
}

// ---- everything else ----------------------------------------------------------------

function renderEvents(snapshot) {
  const list = $("events");
  for (const e of snapshot.events) {
    if (e.seq <= lastEvent) continue;
    lastEvent = e.seq;
    const li = el("li", { class: e.kind });
    li.append(el("span", { class: "t" }, `${e.t.toFixed(1)} s`), document.createTextNode(e.text));
    list.prepend(li);
  }
  while (list.children.length > 200) list.lastChild.remove();
}

function render(snapshot) {
  if (!snapshot.servers) return;
  const latest = history[history.length - 1];
  if (latest && snapshot.t < latest.t) {
    // Time went backwards: a new playground on the same port. Start over.
    history.length = 0;
    lastEvent = 0;
    $("events").replaceChildren();
    $("servers").tBodies[0].replaceChildren();
  } else if (latest && snapshot.t === latest.t) {
    return; // The same snapshot twice: from /api/history, then first from /events.
  }
  const previous = history[history.length - 1];
  // The controls follow what runs now, when it changes (not while one is being set).
  if (!previous || previous.policy.name !== snapshot.policy.name) {
    $("policy-select").value = snapshot.policy.name;
  }
  if (!previous || JSON.stringify(previous.load) !== JSON.stringify(snapshot.load)) {
    const [mode, value] = Object.entries(snapshot.load)[0];
    $("load-mode").value = mode;
    $("load-value").value = value;
  }
  history.push(snapshot);
  while (history.length > HISTORY) history.shift();
  const second = snapshot.second;
  $("rate").textContent = second.ok + second.failed;
  $("ok").textContent = snapshot.ok;
  $("failed").textContent = snapshot.failed;
  $("failed").parentElement.classList.toggle("some", snapshot.failed > 0);
  $("retries").textContent = snapshot.retries;
  $("in-flight").textContent = snapshot.in_flight;
  $("p50").textContent = second.ok ? second.p50_ms.toFixed(2) : "–";
  $("p99").textContent = second.ok ? second.p99_ms.toFixed(2) : "–";
  $("policy-name").textContent = snapshot.policy.name;
  $("policy-summary").textContent = snapshot.policy.summary;
  const doc = $("policy-doc");
  doc.hidden = !snapshot.policy.doc;
  if (snapshot.policy.doc) doc.href = snapshot.policy.doc;
  $("load-text").textContent = snapshot.load_text;
  $("timeout").textContent = `${snapshot.timeout_ms / 1000} s`;
  renderServers(snapshot);
  renderCharts(snapshot);
  renderEvents(snapshot);
}

function follow() {
  const source = new EventSource("/events");
  source.onopen = () => { $("connection").textContent = "live"; };
  source.onmessage = (message) => {
    $("connection").textContent = "live, t = " + JSON.parse(message.data).t.toFixed(0) + " s";
    render(JSON.parse(message.data));
  };
  source.onerror = () => { $("connection").textContent = "disconnected: is the playground still running?"; };
}

// ---- the simulator ------------------------------------------------------------------

function simChart(reports) {
  const box = $("sim-charts");
  box.replaceChildren();
  const maxMs = Math.max(...reports.map((r) => r.latency_ms.p999), 1);
  const scale = (v) => 380 * Math.log10(v + 1) / Math.log10(maxMs + 1);
  const head = el("div", { class: "sim-row" });
  head.append(el("b", {}, "policy"), el("b", {}, "share of calls, by backend"),
              el("b", {}, "latency p50 / p99 / p99.9 in ms (log scale)"));
  box.append(head);
  for (const r of reports) {
    const line = el("div", { class: "sim-row" });
    const shares = svgEl("svg", { viewBox: "0 0 500 20", class: "chart" });
    let x = 0;
    r.backends.forEach((b, i) => {
      const w = 500 * b.share;
      shares.append(svgEl("rect", { x, y: 2, width: Math.max(w, 0), height: 16, fill: COLORS[i % COLORS.length] }));
      if (w > 36) shares.append(svgEl("text", { x: x + 4, y: 14, class: "on-bar" }, `${(b.share * 100).toFixed(0)}%`));
      x += w;
    });
    const lat = svgEl("svg", { viewBox: "0 0 500 36", class: "chart" });
    [["p50", "#c62d2d"], ["p99", "#e07070"], ["p999", "#f0a8a8"]].forEach(([k, c], i) => {
      const w = scale(r.latency_ms[k]);
      lat.append(svgEl("rect", { x: 0, y: 1 + i * 12, width: w, height: 10, fill: c }));
      lat.append(svgEl("text", { x: w + 4, y: 10 + i * 12 }, `${r.latency_ms[k]}`));
    });
    line.append(el("span", { class: "name" }, r.policy + (r.failed ? ` (${r.failed} failed)` : "")), shares, lat);
    box.append(line);
  }
}

async function simulate() {
  let scenario;
  try {
    scenario = JSON.parse($("scenario").value);
  } catch (err) {
    show("error", "the scenario is not JSON: " + err.message);
    return;
  }
  $("sim-status").textContent = "simulating…";
  $("simulate").disabled = true;
  const answer = await post("simulate", scenario);
  $("simulate").disabled = false;
  $("sim-status").textContent = "";
  if (!answer) return;
  $("sim-table").textContent = answer.printout;
  simChart(answer.reports);
}

async function start() {
  const policies = await (await fetch("/api/policies")).json();
  for (const p of policies) {
    $("policy-select").append(el("option", { value: p.name }, `${p.name}: ${p.summary}`));
  }
  $("apply-policy").onclick = () => post("policy", { policy: $("policy-select").value });
  $("apply-load").onclick = () => {
    const value = Number($("load-value").value);
    post("load", { [$("load-mode").value]: value });
  };
  $("add-server").onclick = () => post("servers", {});
  $("simulate").onclick = simulate;
  // A page opened (or reloaded) late starts with the last minute.
  for (const snapshot of await (await fetch("/api/history")).json()) render(snapshot);
  follow();
}

start();
