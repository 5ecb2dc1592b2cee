// thumbview front end: plain JS, no build step, no network beyond this server.
"use strict";

const MAX_IMAGES = 6;
const MAX_TITLES = 3;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  files: [],        // [{file, url, name}]
  health: null,     // GET /health
  rows: null,       // last results, for redraw on resize
  jobTimer: null,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM, not an attribute: allowed by the CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------- numbers ----------
function relativeTarget() {
  return state.health && state.health.target && state.health.target !== "log10";
}

// The one view formatter, the same rule as Python's: 999, 1K, 1.2K, 12K, 123K, 3.5M, 1.2B.
// Below 10 of a unit one decimal (dropped when .0), from 10 on whole units; a value that
// rounds up to 1000 of a unit moves to the next (999,999 -> "1M", never "1000K").
function formatViews(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  if (v < 999.5) return String(Math.round(v));
  const units = ["K", "M", "B", "T"];
  let x = v;
  for (let i = 0; i < units.length; i++) {
    x /= 1000;
    const text = x < 9.95 ? x.toFixed(1).replace(/\.0$/, "") : String(Math.round(x));
    if (Number(text) < 1000 || i === units.length - 1) return text + units[i];
  }
}

function fmtViews(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  if (relativeTarget()) return "×" + (v >= 10 ? v.toFixed(0) : v.toFixed(2));
  return formatViews(v);
}

// "9 times out of 10" when the coverage is a whole number of tenths, else "95% of the time".
function fmtCoverage(c) {
  const tenths = Math.round(c * 1000) / 100;
  return Number.isInteger(tenths) ? `${tenths} times out of 10` : `${Math.round(c * 100)}% of the time`;
}

function fmtPct(p) {
  if (p === null || p === undefined || !isFinite(p)) return "–";
  const x = 100 * p;
  return (x < 1 && x > 0 ? "<1" : x > 99 && x < 100 ? ">99" : Math.round(x)) + "%";
}

function fmtTime(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  const m = Math.floor(s / 60);
  const sec = Math.floor(s % 60);
  return `${m}:${String(sec).padStart(2, "0")}`;
}

// ---------- API ----------
async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, options);
  } catch (e) {
    throw new Error("Cannot reach the thumbview server. Is it still running?");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error((body && body.error) || `Request failed (${resp.status})`);
  return body;
}

function setMsg(node, text, kind = "") {
  node.textContent = text || "";
  node.className = "msg" + (kind ? " " + kind : "");
}

// ---------- picking thumbnails ----------
function addFiles(list) {
  const msg = $("#msg");
  const images = Array.from(list).filter((f) => f.type.startsWith("image/") || !f.type);
  const room = MAX_IMAGES - state.files.length;
  if (images.length > room) setMsg(msg, `Up to ${MAX_IMAGES} thumbnails: kept the first ${Math.max(room, 0)}.`, "error");
  else setMsg(msg, "");
  for (const file of images.slice(0, Math.max(room, 0))) {
    state.files.push({ file, url: URL.createObjectURL(file), name: file.name });
  }
  renderThumbs();
}

function removeFile(i) {
  URL.revokeObjectURL(state.files[i].url);
  state.files.splice(i, 1);
  renderThumbs();
}

function letter(i) { return String.fromCharCode(65 + i); }

function renderThumbs() {
  const list = $("#thumbs");
  list.replaceChildren();
  state.files.forEach((f, i) => {
    const why = state.health && state.health.explain
      ? el("button", { class: "why", type: "button", title: "What does the model see?", onclick: () => explain(i), text: "Why?" })
      : null;
    list.append(el("li", { class: "thumb" },
      el("img", { src: f.url, alt: f.name }),
      el("span", { class: "tag", text: letter(i) }),
      why,
      el("button", { class: "remove", type: "button", "aria-label": `Remove ${f.name}`, onclick: () => removeFile(i), text: "✕" }),
      el("span", { class: "name", text: f.name })));
  });
  $("#go").disabled = state.files.length === 0;
  $("#go").textContent = state.files.length > 1 ? "Compare thumbnails" : "Predict views";
}

function titles() {
  return Array.from(document.querySelectorAll(".title-input")).map((i) => i.value.trim()).filter(Boolean);
}

function addTitle() {
  const list = $("#title-list");
  const n = list.children.length;
  if (n >= MAX_TITLES) return;
  const input = el("input", { id: `title-${n}`, class: "input title-input", type: "text", maxlength: "300", placeholder: `Title idea ${n + 1}` });
  list.append(input);
  input.focus();
  if (n + 1 >= MAX_TITLES) $("#add-title").hidden = true;
}

// ---------- predicting ----------
async function predictAll() {
  const go = $("#go");
  const msg = $("#msg");
  const ts = titles();
  go.disabled = true;
  setMsg(msg, state.files.length > 1 ? "Comparing…" : "Predicting…", "busy");
  try {
    const rows = state.files.length > 1 ? await runCompare(ts) : await runPredict(ts);
    state.rows = rows;
    renderResults(rows);
    setMsg(msg, "");
    $("#results").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (e) {
    setMsg(msg, e.message, "error");
  } finally {
    go.disabled = state.files.length === 0;
  }
}

async function runPredict(ts) {
  const list = ts.length ? ts : [""];
  const rows = [];
  for (const title of list) {
    const form = new FormData();
    form.append("image", state.files[0].file, state.files[0].name);
    form.append("title", title);
    appendContext(form);
    const out = await api("/predict", { method: "POST", body: form });
    state.notes = out;
    const p = out.prediction;
    rows.push({ index: 0, title: p.title, views: p.views, low: p.low, high: p.high, pBeats: null, warning: p.warning || "" });
  }
  rankRows(rows);  // titles for one image: ranked by point estimate, no P(beats)
  return { rows, descriptors: null, warning: rangeWarning(rows.map((r) => r.warning)) };
}

// The video's context from the form (upload date, subscribers, channel size), appended to a
// request as the command line's --published/--subscribers/--channel-videos; empty fields
// are left out, and the server assumes the training data's medians (and says so).
function appendContext(form) {
  const fields = [["published", "#ctx-published"], ["subscribers", "#ctx-subscribers"], ["channel_videos", "#ctx-channel-videos"]];
  for (const [name, sel] of fields) {
    const v = $(sel).value.trim();
    if (v) form.append(name, v);
  }
}

// What the numbers predict, what was assumed or ignored, and the no-skill line: the lines
// the command line prints under its table, as a list (the no-skill one stands out).
function renderModelNotes(box, out) {
  const lines = ["predicts", "assumed", "ignored", "no_skill_note"].map((k) => [k, (out && out[k]) || ""]).filter(([, t]) => t);
  box.replaceChildren(...lines.map(([k, t]) => el("li", { class: k === "no_skill_note" ? "no-skill" : "", text: t.charAt(0).toUpperCase() + t.slice(1) + "." })));
  box.hidden = !lines.length;
}

// The server's out-of-range lines (one per prediction, or the comparison's one) as one
// text: the same check as the command line, shown above the results; "" when none.
function rangeWarning(lines) {
  const seen = [];
  for (const line of lines || []) if (line && !seen.includes(line)) seen.push(line);
  return seen.join(" · ");
}

async function runCompare(ts) {
  const form = new FormData();
  for (const f of state.files) form.append("images", f.file, f.name);
  for (const t of ts) form.append("titles", t);
  appendContext(form);
  const out = await api("/compare", { method: "POST", body: form });
  state.notes = out;
  return normaliseComparison(out);
}

const pick = (obj, ...keys) => {
  for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k];
  return null;
};

// Turns /compare's JSON into rows for the chart and the table; tolerant of field names.
function normaliseComparison(out) {
  const names = out.images || state.files.map((f) => f.name);
  const list = pick(out, "candidates", "rows", "predictions") || [];
  const rows = list.map((c) => {
    const name = pick(c, "image", "name");
    let index = pick(c, "image_index", "index");
    if (index === null) index = Math.max(0, names.indexOf(name));
    const interval = pick(c, "interval");
    return {
      index,
      title: pick(c, "title") || "",
      views: pick(c, "views", "predicted_views"),
      low: pick(c, "low") ?? (interval ? interval[0] : null),
      high: pick(c, "high") ?? (interval ? interval[1] : null),
      pBeats: pick(c, "p_beats_others", "p_beats", "p_best", "prob_beats_others", "p_win"),
      rank: pick(c, "rank"),
    };
  });
  // The server lists candidates best first (by P(best)); keep its order. Its rank labels
  // ("=1" for each candidate in a tie) come from the same verdict as the CLI and the PNG.
  const labels = out.rank_labels || [];
  rows.forEach((r, i) => { if (r.rank === null) r.rank = i + 1; r.rankLabel = labels[i] || null; });
  rows.sort((a, b) => a.rank - b.rank);
  // Every candidate tied ("=1"): the server says chance best is not a ranking
  // (`chance_best_shown` false); no percentage is kept to be shown, "-" stands in its place.
  const chanceHidden = out.chance_best_shown === false;
  if (chanceHidden) rows.forEach((r) => { r.pBeats = null; });
  return { rows, pBeatsMatrix: chanceHidden ? null : out.p_beats || null, descriptors: pick(out, "descriptors", "descriptor_differences", "differences"), sae: out.sae || [], names, warning: rangeWarning([out.warning]), note: out.note || "", reliable: out.tie ? false : out.reliable ?? null, verdict: (out.tie && out.no_skill_note) || out.verdict || "", byImage: out.by_image || [], byTitle: out.by_title || [], chanceBest: out.chance_best_note || out.chance_best || "", chanceHidden };
}

function rankRows(rows) {
  rows.sort((a, b) => b.views - a.views);
  rows.forEach((r, i) => { r.rank = i + 1; });
}

function rowLabel(r) {
  const f = state.files[r.index];
  return (f ? letter(r.index) + " · " : "") + (r.title ? `“${r.title}”` : "no title");
}

// ---------- results ----------
function renderResults(result) {
  const { rows, descriptors } = result;
  $("#results").hidden = false;
  const cov = state.health.coverage;  // the model's own coverage, never assumed
  $("#coverage").textContent = fmtCoverage(cov);
  $("#range-cov").textContent = `(${Math.round(cov * 100)}%)`;
  const warn = $("#range-warning");
  warn.textContent = result.warning ? `Outside what the model was trained on: ${result.warning}` : "";
  warn.hidden = !result.warning;
  renderModelNotes($("#model-notes"), state.notes);
  renderWinner(rows, result.pBeatsMatrix, result.reliable ?? null, result.verdict || "");
  // Only a candidate reliably ahead gets the green "best" row, in the chart and the table.
  result.ahead = reliablyAhead(rows, result.pBeatsMatrix, result.reliable ?? null) === true;
  renderNote(result.note);
  drawChart(rows, result.ahead);
  renderTable(rows, result.ahead, !!result.chanceHidden);
  renderChanceNote(rows, result.chanceBest || "", !!result.chanceHidden);
  renderSummaries(result.byImage || [], result.byTitle || [], !!result.chanceHidden);
  renderDescriptors(descriptors, result.names, result.sae || []);
}

// The server's one line on how the chances were computed, when the user must know it (a
// model without a pairwise calibration falls back to independent residuals); hidden otherwise.
function renderNote(note) {
  const box = $("#method-note");
  box.textContent = note ? `Note: ${note}.` : "";
  box.hidden = !note;
}

// The server decides whether the leader is reliably ahead when the model has a calibrated
// difference model (`reliable`, with its sentence `verdict`); the page follows it. Without one
// (the independent-residual fallback, said in the note) a leader is named only when it beats
// the runner-up at least 3 times out of 4.
const RELIABLE = 0.75;

// true / false, or null when nothing says how sure the ranking is (titles for one image).
function reliablyAhead(rows, matrix, reliable = null) {
  if (rows.length < 2) return true;
  if (reliable === true || reliable === false) return reliable;
  if (matrix && matrix[0] && isFinite(matrix[0][1])) return matrix[0][1] >= RELIABLE;
  const [a, b] = [rows[0].pBeats, rows[1].pBeats];
  return a === null || b === null ? null : a - b >= 0.25;
}

function renderWinner(rows, matrix, reliable = null, verdict = "") {
  const box = $("#winner");
  box.replaceChildren();
  box.classList.remove("tie");
  if (!rows.length) return;
  const ahead = reliablyAhead(rows, matrix, reliable);
  if (ahead === false) {
    const close = rows.filter((r) => r.pBeats !== null && rows[0].pBeats - r.pBeats < 0.1);
    const n = Math.max(close.length, 2);
    box.classList.add("tie");
    box.append(el("div", {},
      el("div", { class: "kicker", text: "Too close to call" }),
      el("div", { class: "big", text: "No candidate is reliably ahead" }),
      el("div", { class: "what", text: verdict ? verdict.charAt(0).toUpperCase() + verdict.slice(1) + "." : `The top ${n} are within a few points of each other (${close.slice(0, n).map((r) => fmtPct(r.pBeats)).join(", ")} chance of being the best): the model cannot tell them apart. Choose on other grounds, or test them.` })));
    return;
  }
  const best = rows[0];
  const f = state.files[best.index];
  const what = rows.length < 2 ? "Predicted views" : ahead ? "Most likely to win" : "Highest prediction";
  const detail = best.pBeats !== null && rows.length > 1 ? ` · ${fmtPct(best.pBeats)} chance it’s the best (it comes out on top in ${fmtPct(best.pBeats)} of replays of the model’s typical errors)` : "";
  box.append(
    f ? el("img", { src: f.url, alt: "" }) : null,
    el("div", {},
      el("div", { class: "kicker", text: what }),
      el("div", { class: "big", text: `${fmtViews(best.views)} views` }),
      el("div", { class: "what", text: `${f ? f.name : ""}${best.title ? " with “" + best.title + "”" : ""} · likely ${fmtViews(best.low)}–${fmtViews(best.high)}${detail}` }),
      verdict && rows.length > 1 ? el("div", { class: "what verdict", text: verdict.charAt(0).toUpperCase() + verdict.slice(1) + "." }) : null));
}

function logTicks(lo, hi) {
  const ticks = [];
  const steps = hi / lo > 300 ? [1] : [1, 2, 5];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const s of steps) {
      const v = s * 10 ** e;
      if (v >= lo && v <= hi) ticks.push(v);
    }
  }
  return ticks;
}

function drawChart(rows, ahead = false) {
  const box = $("#chart");
  box.replaceChildren();
  if (!rows.length) return;
  const width = Math.max(box.clientWidth || 600, 280);
  const narrow = width < 520;
  const thumbW = narrow ? 64 : 96;
  const rowH = narrow ? 56 : 66;
  const left = thumbW + 14;
  const right = 56;  // room for the value label after the widest range
  const top = 8;
  const height = top + rows.length * rowH + 28;
  const lows = rows.map((r) => r.low).filter((v) => v > 0);
  const highs = rows.map((r) => r.high).filter((v) => v > 0);
  let lo = Math.min(...lows, ...rows.map((r) => r.views)) / 1.4;
  let hi = Math.max(...highs, ...rows.map((r) => r.views)) * 1.4;
  if (!(lo > 0)) lo = 1;
  if (!(hi > lo)) hi = lo * 10;
  const x = (v) => left + (width - left - right) * (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Predicted views with likely ranges" });
  for (const t of logTicks(lo, hi)) {
    root.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: top, y2: height - 24 }));
    root.append(svg("text", { class: "axis-label", x: x(t), y: height - 8, "text-anchor": "middle" }, fmtViews(t)));
  }
  rows.forEach((r, i) => root.append(chartRow(r, i, { x, top, rowH, thumbW, width, right, ahead })));
  box.append(root);
}

function chartRow(r, i, g) {
  const y0 = g.top + i * g.rowH;
  const group = svg("g", { class: g.ahead && i === 0 && r.rank === 1 ? "row best" : "row" });
  const f = state.files[r.index];
  const thumbH = Math.round(g.thumbW * 9 / 16);
  if (f) {
    const clip = `clip-${i}`;
    const defs = svg("defs");
    const cp = svg("clipPath", { id: clip });
    cp.append(svg("rect", { x: 0, y: y0 + (g.rowH - thumbH) / 2, width: g.thumbW, height: thumbH, rx: 6 }));
    defs.append(cp);
    group.append(defs, svg("image", { href: f.url, x: 0, y: y0 + (g.rowH - thumbH) / 2, width: g.thumbW, height: thumbH, preserveAspectRatio: "xMidYMid slice", "clip-path": `url(#${clip})` }));
  }
  const label = svg("text", { class: "row-title", x: g.thumbW + 14, y: y0 + 18 }, truncate(rowLabel(r), Math.floor((g.width - g.thumbW - 80) / 7.2)));
  const lo = Math.max(r.low, 1e-9);
  const barY = y0 + 30;
  group.append(label,
    svg("rect", { class: "range", x: g.x(lo), y: barY, width: Math.max(g.x(r.high) - g.x(lo), 2), height: 12, rx: 6 }),
    svg("circle", { class: "dot", cx: g.x(r.views), cy: barY + 6, r: 7 }));
  group.append(svg("text", { class: "row-value", x: g.x(r.high) + 8, y: barY + 11 }, fmtViews(r.views)));
  return group;
}

function truncate(s, n) { return s.length > n ? s.slice(0, Math.max(n - 1, 4)) + "…" : s; }

// The chance-best cell: a bar and its percentage, or "-" when every candidate is tied.
function chanceCell(r, hidden = false) {
  if (hidden) return el("td", { class: "num", text: "-" });
  return el("td", {}, el("div", { class: "beats" },
    el("div", { class: "track" }, el("div", { class: "fill", style: `width:${Math.round(100 * (r.pBeats || 0))}%` })),
    el("span", { class: "pct", text: fmtPct(r.pBeats) })));
}

function renderTable(rows, ahead = false, hidden = false) {
  const body = $("#ranking tbody");
  body.replaceChildren();
  const showBeats = hidden || rows.some((r) => r.pBeats !== null);
  $("#beats-h").hidden = !showBeats;
  rows.forEach((r, i) => {
    const f = state.files[r.index];
    const beats = showBeats ? chanceCell(r, hidden) : null;
    body.append(el("tr", { class: ahead && i === 0 ? "best" : "" },
      el("td", { class: "num rank", text: r.rankLabel || String(r.rank) }),
      el("td", {}, f ? el("img", { src: f.url, alt: f.name, title: f.name }) : null,
        el("span", { class: "title-sub", text: r.title || "" })),
      el("td", { class: "title-cell", text: r.title || "—" }),
      el("td", { class: "num", text: fmtViews(r.views) }),
      el("td", { class: "num range-col", text: `${fmtViews(r.low)}–${fmtViews(r.high)}` }),
      beats));
  });
}

// What "chance it's the best" means, in words, under the table (the server's sentence), or
// why it is not shown when every candidate is tied.
function renderChanceNote(rows, text, hidden = false) {
  const box = $("#chance-note");
  const show = (hidden || rows.some((r) => r.pBeats !== null)) && !!text;
  box.textContent = show ? text.charAt(0).toUpperCase() + text.slice(1) + "." : "";
  box.hidden = !show;
}

// Per thumbnail (across the titles) and per title (across the thumbnails): the server's
// summaries of the cross product, shown only when both vary.
// `hidden`: every candidate is tied, so the chance the best pair uses it is shown as "-".
function summaryTables(byImage, byTitle, hidden = false) {
  if (!byImage.length || !byTitle.length) return [];
  return [["Per thumbnail", byImage], ["Per title", byTitle]].map(([head, list]) => ({
    head,
    rows: list.map((s) => [s.name || "(no title)", `${fmtViews(s.views)} typical (${fmtViews(s.low)}–${fmtViews(s.high)})`, hidden ? "chance the best pair uses it: -" : `${fmtPct(s.p_best)} chance the best pair uses it`]),
  }));
}

function renderSummaries(byImage, byTitle, hidden = false) {
  const box = $("#summaries");
  const tables = summaryTables(byImage, byTitle, hidden);
  box.replaceChildren(...tables.map((t) => el("div", {}, el("h4", { text: t.head }),
    el("table", { class: "table" }, el("tbody", {}, ...t.rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", { text: c })))))))));
  box.hidden = tables.length === 0;
}

// ---------- descriptors (shape depends on thumbview.compare) ----------
function renderDescriptors(desc, names, sae) {
  const block = $("#descriptors-block");
  const box = $("#descriptors");
  box.replaceChildren();
  const items = descriptorItems(desc, names || []).concat(saeItems(sae));
  block.hidden = items.length === 0;
  for (const it of items) {
    const values = el("div", { class: "desc-values" });
    for (const v of it.values) {
      const f = v.index !== null ? state.files[v.index] : null;
      values.append(el("span", { class: "chip" + (f ? "" : " plain") }, f ? el("img", { src: f.url, alt: "" }) : null, v.text));
    }
    const examples = it.examples && it.examples.length
      ? el("div", { class: "desc-examples" }, ...it.examples.map((src) => el("img", { src, alt: "", loading: "lazy", onerror: (e) => e.target.remove() })))
      : null;
    box.append(el("div", { class: "desc-row" },
      el("div", {}, el("div", { class: "desc-name", text: it.name }), it.note ? el("div", { class: "desc-note", text: it.note }) : null, examples),
      values));
  }
}

function fmtValue(v) {
  if (typeof v === "number") return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

function descriptorItems(desc, names) {
  if (!desc) return [];
  const list = Array.isArray(desc) ? desc : Object.entries(desc).map(([name, v]) => ({ name, values: v }));
  return list.slice(0, 12).map((d) => {
    const name = pick(d, "label", "name", "descriptor", "feature") || "";
    // The server's reading ("lowest in d.jpg; more of it tends to help ...") names equal
    // images together and says whether the difference helps or hurts; it is shown as is.
    const highest = pick(d, "highest");
    const hi = highest !== null ? names.indexOf(highest) : -1;
    const note = pick(d, "note") || (hi >= 0 ? `highest in ${letter(hi)}` : pick(d, "summary", "description"));
    let vals = pick(d, "values", "by_image", "per_image") || [];
    if (!Array.isArray(vals)) vals = Object.entries(vals).map(([k, v]) => ({ image: k, value: v }));
    const values = vals.map((v, i) => {
      if (typeof v !== "object" || v === null) return { index: i < state.files.length ? i : null, text: fmtValue(v) };
      const img = pick(v, "image", "name");
      const idx = names.indexOf(img);
      return { index: idx >= 0 ? idx : null, text: fmtValue(pick(v, "value", "display")) };
    });
    return { name, note: typeof note === "string" ? note : note === null ? null : fmtValue(note), values };
  }).filter((d) => d.name);
}

// SAE latents that differ most between the images, with the study's view ratio.
function saeItems(sae) {
  return sae.map((d) => ({
    name: `Visual feature ${d.latent}`,
    note: d.ratio !== null && d.ratio !== undefined ? `×${d.ratio.toFixed(2)} views in the study` : "not in the study",
    examples: [0, 1, 2].map((k) => `/explain/examples/${d.latent}/${k}`),
    values: (d.activations || []).map((v, i) => ({ index: i < state.files.length ? i : null, text: fmtValue(v) })),
  }));
}

// ---------- explain ----------
async function explain(i) {
  const f = state.files[i];
  const section = $("#explain");
  const box = $("#features");
  section.hidden = false;
  $("#explain-name").textContent = `thumbnail ${letter(i)}`;
  box.replaceChildren(el("p", { class: "msg busy", text: "Looking at the thumbnail…" }));
  section.scrollIntoView({ behavior: "smooth", block: "start" });
  const form = new FormData();
  form.append("image", f.file, f.name);
  try {
    const out = await api("/explain", { method: "POST", body: form });
    renderFeatures(out.features);
  } catch (e) {
    box.replaceChildren(el("p", { class: "msg error", text: e.message }));
  }
}

function renderFeatures(features) {
  const box = $("#features");
  box.replaceChildren();
  if (!features.length) {
    box.append(el("p", { class: "msg", text: "No strong visual features found in this thumbnail." }));
    return;
  }
  const maxAct = Math.max(...features.map((f) => f.activation));
  for (const f of features) {
    let effect = el("span", { class: "effect", text: "not in study" });
    let note = "Too rare in the study to say how it does.";
    if (f.ratio !== null) {
      const up = f.ratio >= 1;
      effect = el("span", { class: "effect " + (up ? "up" : "down"), text: `${up ? "▲" : "▼"} ×${f.ratio.toFixed(2)} views` });
      note = f.q !== null && f.q < 0.05 ? "A reliable difference in the study." : "A weak signal: could be chance.";
    }
    box.append(el("div", { class: "feature" },
      el("div", { class: "head" }, el("span", { class: "id", text: f.name ? `Feature ${f.latent} (looks like: ${f.name})` : `Feature ${f.latent}` }), effect),
      el("p", { class: "note", text: note }),
      el("div", { class: "strength", title: "How strongly it shows in your thumbnail" }, el("span", { style: `width:${Math.round(100 * f.activation / maxAct)}%` })),
      el("div", { class: "examples" }, ...f.examples.map((src) => el("img", { src, alt: "Study thumbnail with this feature", loading: "lazy" })))));
  }
}

// ---------- frames ----------
async function startFrames() {
  const input = $("#video");
  const msg = $("#frames-msg");
  if (!input.files.length) return;
  clearInterval(state.jobTimer);
  $("#stills").replaceChildren();
  $("#frames-go").disabled = true;
  setProgress(0);
  $("#progress").hidden = false;
  setMsg(msg, "Uploading the video…", "busy");
  const form = new FormData();
  form.append("video", input.files[0], input.files[0].name);
  form.append("title", $("#video-title").value.trim());
  appendContext(form);
  $("#frames-notes").hidden = true;
  try {
    const job = await api("/frames", { method: "POST", body: form });
    setMsg(msg, "Scoring frames…", "busy");
    state.jobTimer = setInterval(() => pollJob(job.job_id), 700);
  } catch (e) {
    $("#progress").hidden = true;
    setMsg(msg, e.message, "error");
    $("#frames-go").disabled = false;
  }
}

function setProgress(p) {
  const pct = Math.round(100 * p);
  $("#progress .progress-track span").style.width = pct + "%";
  $("#progress .progress-track").setAttribute("aria-valuenow", String(pct));
  $("#progress .progress-label").textContent = pct + "%";
}

async function pollJob(id) {
  const msg = $("#frames-msg");
  let job;
  try {
    job = await api(`/frames/${encodeURIComponent(id)}`);
  } catch (e) {
    clearInterval(state.jobTimer);
    setMsg(msg, e.message, "error");
    $("#frames-go").disabled = false;
    return;
  }
  setProgress(job.progress || 0);
  if (job.status === "running" && job.stage) {
    setMsg(msg, job.stage.charAt(0).toUpperCase() + job.stage.slice(1) + "…", "busy");
  }
  if (job.status === "done" || job.status === "failed") {
    clearInterval(state.jobTimer);
    $("#frames-go").disabled = false;
    if (job.status === "failed") setMsg(msg, job.error || "Ranking failed.", "error");
    else { setMsg(msg, ""); renderStills(job.result); renderModelNotes($("#frames-notes"), job.result); }
  } else if (job.status === "queued") {
    setMsg(msg, "Waiting for another video to finish…", "busy");
  }
}

// The stills list is the first array of objects in the result that carries image URLs.
function stillItems(result) {
  const isStill = (o) => o && typeof o === "object" && Object.values(o).some((v) => typeof v === "string" && v.startsWith("/frames/"));
  const queue = [result];
  while (queue.length) {
    const node = queue.shift();
    if (Array.isArray(node) && node.some(isStill)) return node.filter(isStill);
    if (node && typeof node === "object") queue.push(...Object.values(node));
  }
  return [];
}

// The frames job's verdict and out-of-range line: the same ones compare and the CLI show.
function renderFramesVerdict(result) {
  const verdict = $("#frames-verdict");
  const warn = $("#frames-warning");
  const said = (result && result.verdict) || "";
  verdict.textContent = said ? said.charAt(0).toUpperCase() + said.slice(1) + "." : "";
  verdict.className = "frames-verdict" + (result && result.reliable === false ? " tie" : "");
  verdict.hidden = !said;
  const line = (result && result.warning) || "";
  warn.textContent = line ? `Outside what the model was trained on: ${line}` : "";
  warn.hidden = !line;
}

function renderStills(result) {
  const box = $("#stills");
  box.replaceChildren();
  renderFramesVerdict(result);
  const labels = (result && result.rank_labels) || [];
  const items = stillItems(result);
  if (!items.length) {
    setMsg($("#frames-msg"), "No usable frames were found in this video.", "error");
    return;
  }
  items.forEach((s, i) => {
    const src = Object.values(s).find((v) => typeof v === "string" && v.startsWith("/frames/"));
    const views = pick(s, "views", "predicted_views");
    const when = pick(s, "timestamp_s", "time_s", "time", "seconds", "t");
    box.append(el("figure", { class: "still", style: "margin:0" },
      el("img", { src, alt: `Frame ${i + 1}` }),
      el("figcaption", { class: "meta" },
        el("span", { class: "views", text: views !== null ? `${labels[i] || "#" + (i + 1)} · ${fmtViews(views)} views` : labels[i] || `#${i + 1}` }),
        el("span", { class: "when", text: when !== null ? "at " + fmtTime(when) : "" }))));
  });
}

// ---------- start-up ----------
async function loadHealth() {
  const pill = $("#status");
  try {
    state.health = await api("/health");
    pill.textContent = `Model ready · ${state.health.encoders.join(" + ")}`;
    pill.className = "pill ok";
    renderThumbs();
  } catch (e) {
    pill.textContent = "Server not reachable";
    pill.className = "pill bad";
  }
}

function wire() {
  const drop = $("#drop");
  const file = $("#file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  file.addEventListener("change", () => { addFiles(file.files); file.value = ""; });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("#add-title").addEventListener("click", addTitle);
  $("#go").addEventListener("click", predictAll);
  $("#video").addEventListener("change", () => {
    const f = $("#video").files[0];
    $("#video-name").textContent = f ? f.name : "No video chosen";
    $("#frames-go").disabled = !f;
  });
  $("#frames-go").addEventListener("click", startFrames);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (state.rows) drawChart(state.rows.rows, state.rows.ahead); }, 120);
  });
}

wire();
loadHealth();
