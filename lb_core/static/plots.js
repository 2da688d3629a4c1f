// bbb-lb dashboard plots: draws /api/series as inline SVG line charts (no library, nothing fetched
// from elsewhere). The page only draws: every value plotted is in /api/series, with /metrics' meanings.
// The page keeps its own window and asks only for the points after its newest (mergeSeries).
// Names come from the API and are put in as text or attribute values only, never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
// A palette per kind of line, so a server's colour means that server wherever it appears on the page.
const SERVER_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                        "#bcbd22", "#7f7f7f"];
const CALL_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                      "#9c755f", "#bab0ac"];
const INTEGRATION_PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"];
const WIDTH = 560;
const HEIGHT = 190;
const PAD = { left: 48, right: 12, top: 12, bottom: 24 };

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, String(value));
  return element;
}

// One colour per name, the same in every chart (a server is the same colour in load and participants).
function colours(names, palette) {
  const sorted = [...new Set(names)].sort();
  return Object.fromEntries(sorted.map((name, i) => [name, palette[i % palette.length]]));
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function formatNumber(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return String(Number(value.toFixed(value >= 10 ? 1 : 2)));
}

function mean(values) {
  const present = values.filter((v) => v !== null && v !== undefined);
  return present.length ? present.reduce((a, b) => a + b, 0) / present.length : null;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

// lines: [{name, values, colour, dashed, kind}], values aligned with times (null = no value then).
function drawChart(figure, title, unit, times, lines, resolution) {
  figure.replaceChildren();
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.appendChild(caption);
  const svg = svgElement("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title,
                                  class: "chart" });
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const all = lines.flatMap((line) => line.values).filter((v) => v !== null && v !== undefined);
  const top = niceMax(Math.max(0, ...all));
  svg.dataset.top = String(top);
  const now = times.length ? times[times.length - 1] : Date.now() / 1000;
  const span = Math.max(resolution * (times.length > 1 ? times.length - 1 : 1), resolution);
  const start = now - span;
  const x = (t) => PAD.left + ((t - start) / span) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  for (const fraction of [0, 0.5, 1]) {
    const gy = y(top * fraction);
    svg.appendChild(svgElement("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: gy, y2: gy, class: "grid" }));
    const label = svgElement("text", { x: PAD.left - 6, y: gy + 4, "text-anchor": "end", class: "axis" });
    label.textContent = formatNumber(top * fraction);
    svg.appendChild(label);
  }
  const minutes = Math.round(span / 60);
  const left = svgElement("text", { x: PAD.left, y: HEIGHT - 6, class: "axis" });
  left.textContent = minutes >= 1 ? `−${minutes} min` : `−${Math.round(span)} s`;
  const right = svgElement("text", { x: WIDTH - PAD.right, y: HEIGHT - 6, "text-anchor": "end", class: "axis" });
  right.textContent = "now";
  svg.append(left, right);
  if (unit) {
    const unitLabel = svgElement("text", { x: PAD.left + 4, y: PAD.top + 10, class: "axis unit" });
    unitLabel.textContent = unit;
    svg.appendChild(unitLabel);
  }
  for (const line of lines) {
    let d = "";
    let pen = false;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)} `;
      pen = true;
    });
    const path = svgElement("path", { d: d.trim() || `M${PAD.left},${y(0)}`, fill: "none", stroke: line.colour,
                                      "stroke-width": line.dashed ? 1.5 : 2.5, class: "line " + line.kind });
    if (line.dashed) path.setAttribute("stroke-dasharray", "6 4");
    path.dataset.name = line.name;
    path.dataset.kind = line.kind;
    path.dataset.last = String(lastValue(line.values));
    path.dataset.mean = String(mean(line.values));
    const tooltip = svgElement("title");
    tooltip.textContent = `${line.name}${line.dashed ? " (limit)" : ""}: ${formatNumber(lastValue(line.values))}`;
    path.appendChild(tooltip);
    svg.appendChild(path);
  }
  figure.appendChild(svg);
  const legend = document.createElement("ul");
  legend.className = "legend";
  if (!lines.length) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = "nothing yet";
    legend.appendChild(item);
  }
  for (const line of lines) {
    const item = document.createElement("li");
    const swatch = svgElement("svg", { width: 14, height: 8, class: "swatch" });
    const mark = svgElement("line", { x1: 0, x2: 14, y1: 4, y2: 4, stroke: line.colour, "stroke-width": 2 });
    if (line.dashed) mark.setAttribute("stroke-dasharray", "3 2");
    swatch.appendChild(mark);
    const name = document.createElement("span");
    name.textContent = `${line.name}${line.dashed ? " limit" : ""} ${formatNumber(lastValue(line.values))}`;
    item.append(swatch, name);
    legend.appendChild(item);
  }
  figure.appendChild(legend);
}

function figure(id) {
  let element = document.getElementById(id);
  if (!element) {
    element = document.createElement("figure");
    element.id = id;
    element.className = "plot";
    document.getElementById("plots").appendChild(element);
  }
  return element;
}

function seriesLines(group, field, palette, kind, dashed) {
  return Object.entries(group)
    .filter(([, fields]) => fields[field] && fields[field].some((v) => v !== null && v !== undefined))
    .map(([name, fields]) => ({ name, values: fields[field], colour: palette[name], kind, dashed: !!dashed }));
}

// The window the page holds, extended by an answer of /api/series?since=: the new points appended and
// the oldest dropped beyond the server's `points`. A series new to the page has nulls before it appeared;
// a series absent from the answer has left the server's window and leaves the page's too. A "full"
// answer (the page fell behind, bbb-lb restarted) replaces what the page holds.
function mergeSeries(held, answer) {
  if (!held || answer.full || held.resolution_s !== answer.resolution_s || held.points !== answer.points) {
    return answer;
  }
  const keep = Math.max(0, Math.min(held.times.length, answer.points - answer.times.length));
  const drop = held.times.length - keep;
  const merged = { ...answer, times: held.times.slice(drop).concat(answer.times) };
  for (const group of ["servers", "calls", "integrations"]) {
    merged[group] = {};
    for (const [name, fields] of Object.entries(answer[group])) {
      const before = held[group][name] || {};
      merged[group][name] = {};
      for (const [field, values] of Object.entries(fields)) {
        const old = before[field] || new Array(held.times.length).fill(null);
        merged[group][name][field] = old.slice(drop).concat(values);
      }
    }
  }
  return merged;
}

// The newest time the page holds: what it asks /api/series for the points after (null: ask for all).
function newestTime(held) {
  return held && held.times.length ? held.times[held.times.length - 1] : null;
}

function renderPlots(series) {
  const { times, resolution_s: resolution, servers, calls, integrations } = series;
  const serverColours = colours(Object.keys(servers), SERVER_PALETTE);
  drawChart(figure("plot-server-load"), "Load per server", "participant units", times,
            seriesLines(servers, "load", serverColours, "server"), resolution);
  drawChart(figure("plot-server-participants"), "Participants per server", "", times,
            seriesLines(servers, "participants", serverColours, "server"), resolution);
  const callColours = colours(Object.keys(calls), CALL_PALETTE);
  drawChart(figure("plot-call-requests"), "API requests by call", "per second", times,
            seriesLines(calls, "requests", callColours, "call"), resolution);
  drawChart(figure("plot-call-failed"), "FAILED answers by call", "per second", times,
            seriesLines(calls, "failed", callColours, "call"), resolution);
  const integrationColours = colours(Object.keys(integrations), INTEGRATION_PALETTE);
  drawChart(figure("plot-integration-meetings"), "Meetings per integration (dashed: its max_meetings)", "",
            times, [...seriesLines(integrations, "meetings", integrationColours, "integration"),
                    ...seriesLines(integrations, "max_meetings", integrationColours, "limit", true)], resolution);
  drawChart(figure("plot-integration-participants"),
            "Participants per integration (dashed: its max_participants)", "", times,
            [...seriesLines(integrations, "participants", integrationColours, "integration"),
             ...seriesLines(integrations, "max_participants", integrationColours, "limit", true)], resolution);
  const plots = document.getElementById("plots");
  plots.dataset.points = String(times.length);
  plots.dataset.first = times.length ? String(times[0]) : "";
  plots.dataset.last = times.length ? String(times[times.length - 1]) : "";
}

window.bbbPlots = { renderPlots, mergeSeries, newestTime };
