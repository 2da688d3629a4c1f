// bbb-lb dashboard: polls /api/dashboard and /api/series every 2 s and redraws its tables and plots.
// The plots' history is fetched once; each poll then asks /api/series only for the points after the
// newest the page holds (?since=), so a page open for hours downloads each point once.
// Everything from the API is put into the page as text (never as HTML): meeting IDs come from clients.
"use strict";

const REFRESH_MS = 2000;
const STATES = { 0: "enabled", 1: "disabled", 3: "auto" };
const OK_RESULTS = new Set(["SUCCESS", "redirect", "successfullyJoined", "200"]);
let heldSeries = null; // the plots' window as the page holds it
// Shown on #plots: answers of the whole window, answers of new points only, and the points these brought.
const seriesAnswers = { full: 0, since: 0, sincePoints: 0 };

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function badge(text, className) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = "badge " + className;
  span.textContent = text;
  td.appendChild(span);
  return td;
}

function emptyRow(tbody, columns, text) {
  const tr = document.createElement("tr");
  const td = cell(text, "empty");
  td.colSpan = columns;
  tr.appendChild(td);
  tbody.appendChild(tr);
}

function renderServers(servers) {
  const tbody = document.querySelector("#servers tbody");
  tbody.replaceChildren();
  if (!servers.length) emptyRow(tbody, 8, "no servers");
  for (const s of servers) {
    const tr = document.createElement("tr");
    tr.dataset.server = s.name;
    if (s.is_disabled || s.draining) tr.className = "excluded";
    tr.appendChild(cell(s.name, "name"));
    const status = badge(s.status, "status status-" + s.status);
    status.classList.add("status");
    if (s.last_error) {
      const detail = document.createElement("span");
      detail.className = "detail";
      detail.textContent = s.last_error;
      status.appendChild(detail);
    }
    tr.appendChild(status);
    const state = STATES[s.disable_state] || String(s.disable_state);
    tr.appendChild(cell(state + (s.is_disabled && state === "auto" ? " (off)" : ""), "state state-" + state));
    tr.appendChild(cell(s.draining ? "yes" : "no", "draining draining-" + (s.draining ? "yes" : "no")));
    tr.appendChild(cell(s.meetings, "num meetings"));
    tr.appendChild(cell(s.participants, "num participants"));
    tr.appendChild(cell(Number(s.load).toFixed(1), "num load"));
    tr.appendChild(cell(s.url, "url"));
    tbody.appendChild(tr);
  }
}

// "used / limit", marked when the limit is reached: the integration's next join or create is refused.
function usage(used, limit, className) {
  if (limit === null || limit === undefined) return cell(used, "num " + className);
  const full = used >= limit;
  return cell(`${used} / ${limit}`, `num ${className}${full ? " at-limit" : ""}`);
}

function renderIntegrations(integrations) {
  const tbody = document.querySelector("#integrations tbody");
  tbody.replaceChildren();
  if (!integrations.length) emptyRow(tbody, 8, "no integrations");
  for (const i of integrations) {
    const tr = document.createElement("tr");
    tr.dataset.integration = i.name;
    if (!i.enabled) tr.className = "excluded";
    tr.appendChild(cell(i.name, "name"));
    tr.appendChild(cell(i.enabled ? "yes" : "no", "enabled"));
    tr.appendChild(cell(i.can_record ? "yes" : "no", "record"));
    tr.appendChild(usage(i.meetings, i.max_meetings, "meetings"));
    const participants = usage(i.participants, i.max_participants, "participants");
    if (i.max_participants !== null && !i.limit_moderators) participants.title = "moderators are not limited";
    tr.appendChild(participants);
    tr.appendChild(cell(i.max_duration_minutes === null ? "-" : i.max_duration_minutes, "num duration"));
    const rules = i.rules || {};
    tr.appendChild(cell(Object.values(rules).reduce((n, params) => n + Object.keys(params).length, 0), "num rules"));
    const hits = Object.entries(i.limit_hits || {}).map(([kind, count]) => `${kind} ${count}`).join(", ");
    tr.appendChild(cell(hits || "-", "hits"));
    tbody.appendChild(tr);
  }
}

function renderEvents(events) {
  const tbody = document.querySelector("#events tbody");
  tbody.replaceChildren();
  if (!events.length) emptyRow(tbody, 7, "no API calls yet");
  for (const e of events) {
    const tr = document.createElement("tr");
    tr.appendChild(cell(new Date(e.time * 1000).toLocaleTimeString(), "time"));
    tr.appendChild(cell(e.call || "-", "call"));
    tr.appendChild(cell(e.integration || "-", "integration"));
    tr.appendChild(cell(e.meeting_id || "-", "meeting wrap"));
    tr.appendChild(cell(e.server || "-", "server"));
    const ok = OK_RESULTS.has(e.result) && e.status < 400;
    tr.appendChild(cell(e.result, "result " + (ok ? "result-ok" : "result-error")));
    tr.appendChild(cell(Number(e.ms).toFixed(1), "num ms"));
    tbody.appendChild(tr);
  }
}

// Several bbb-lb processes on one Redis: every live one (its heartbeat), this one marked.
function renderNodes(status) {
  const section = document.getElementById("nodes-section");
  section.hidden = !status.nodes;
  if (!status.nodes) return;
  const tbody = document.querySelector("#nodes tbody");
  tbody.replaceChildren();
  if (!status.nodes.length) emptyRow(tbody, 7, status.nodes_error || "no live instance");
  for (const n of status.nodes) {
    const tr = document.createElement("tr");
    tr.appendChild(cell(n.node + (n.node === status.node ? " (this one)" : ""), "node"));
    tr.appendChild(cell(n.host));
    tr.appendChild(cell(n.pid, "num"));
    tr.appendChild(n.poller ? badge("poller", "status-up") : cell("-"));
    tr.appendChild(cell(n.meetings, "num"));
    tr.appendChild(cell(new Date(n.started_at * 1000).toLocaleString(), "time"));
    tr.appendChild(cell(new Date(n.seen_at * 1000).toLocaleTimeString(), "time"));
    tbody.appendChild(tr);
  }
}

function renderRecordings(recordings) {
  const counts = document.getElementById("recording-counts");
  const tbody = document.querySelector("#imports tbody");
  tbody.replaceChildren();
  if (!recordings) {
    counts.textContent = "";
    return;
  }
  counts.textContent = `${recordings.total} recordings · ` +
    Object.entries(recordings.counts).map(([state, n]) => `${n} ${state}`).join(" · ");
  if (!recordings.last_imports.length) emptyRow(tbody, 6, "no imports yet");
  for (const i of recordings.last_imports) {
    const tr = document.createElement("tr");
    tr.appendChild(cell(new Date(i.at * 1000).toLocaleTimeString(), "time"));
    tr.appendChild(cell(i.file, "wrap"));
    tr.appendChild(cell(i.server || "-", "server"));
    tr.appendChild(cell(i.record_id || "-", "wrap"));
    tr.appendChild(cell(i.result, "result " + (i.result === "refused" ? "result-error" : "result-ok")));
    tr.appendChild(cell(i.reason || "", "wrap"));
    tbody.appendChild(tr);
  }
}

function renderSummary(status) {
  document.getElementById("summary").textContent =
    `${status.servers_up}/${status.servers} servers up, ${status.servers_usable} taking new meetings · ` +
    `${status.meetings} meetings · ${status.participants} participants · instance ${status.instance}`;
}

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text;
  box.hidden = !text;
}

async function refresh() {
  try {
    const ask = (path) => fetch(path, { credentials: "same-origin", cache: "no-store" });
    const since = window.bbbPlots.newestTime(heldSeries);
    const seriesPath = since === null ? "/api/series" : "/api/series?since=" + encodeURIComponent(String(since));
    const [response, seriesResponse] = await Promise.all([ask("/api/dashboard"), ask(seriesPath)]);
    if (response.status === 401 || seriesResponse.status === 401) {
      showError("Not signed in: open /dashboard?token=<admin.token> again.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    if (!seriesResponse.ok) {
      heldSeries = null; // ask for the whole window next time
      throw new Error(`HTTP ${seriesResponse.status}`);
    }
    const data = await response.json();
    const answer = await seriesResponse.json();
    heldSeries = window.bbbPlots.mergeSeries(heldSeries, answer);
    seriesAnswers[answer.full ? "full" : "since"] += 1;
    if (!answer.full) seriesAnswers.sincePoints += answer.times.length;
    window.bbbPlots.renderPlots(heldSeries);
    const plots = document.getElementById("plots");
    plots.dataset.fullAnswers = String(seriesAnswers.full);
    plots.dataset.sinceAnswers = String(seriesAnswers.since);
    plots.dataset.sincePoints = String(seriesAnswers.sincePoints);
    renderSummary(data.status);
    renderNodes(data.status);
    renderServers(data.servers);
    renderIntegrations(data.integrations || []);
    renderEvents(data.recent);
    renderRecordings(data.recordings);
    document.getElementById("updated").textContent = "updated " + new Date(data.time * 1000).toLocaleTimeString();
    document.body.dataset.loaded = "true";
    showError("");
  } catch (error) {
    showError(`Cannot reach bbb-lb (${error.message}); retrying…`);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
