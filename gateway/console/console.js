// The Tally console: one page over the gateway's HTTP API, with no build step. Each view
// mounts its controls once and refreshes its data every REFRESH_MS; everything it shows it
// reads through the API with the token the user gives it (kept in this browser only).
"use strict";

const REFRESH_MS = 2000;
// Samples the charts keep (one per refresh): two minutes.
const SAMPLES = 60;

// ---- settings and the API ------------------------------------------------------------------

const settings = {
  get token() { return localStorage.getItem("tally.token") || ""; },
  set token(t) { localStorage.setItem("tally.token", t); },
  get book() { return Number(localStorage.getItem("tally.book") || "0"); },
  set book(b) { localStorage.setItem("tally.book", String(b)); },
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Calls the API; the reply's JSON (null for an empty one). Errors carry the API's code.
async function api(path, options = {}) {
  const headers = { "X-Tally-Book": String(settings.book), ...(options.headers || {}) };
  if (settings.token) headers.Authorization = "Bearer " + settings.token;
  const reply = await fetch(path, { ...options, headers });
  const text = await reply.text();
  let body = null;
  try { body = text ? parseJson(text) : null; } catch (_) { body = text; }
  if (!reply.ok) {
    const e = body && body.error ? body.error : { code: String(reply.status), message: text };
    throw new ApiError(reply.status, e.code, e.message);
  }
  return body;
}

// JSON with its integers beyond 2^53 (tags are 64-bit) kept exact, as BigInt, where the
// browser passes the reviver the number's source text.
function parseJson(text) {
  return JSON.parse(text, (_, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)
      ? BigInt(context.source) : value);
}

// JSON text of a value that may hold BigInts, written as the integers they are.
function jsonText(value, indent) {
  return JSON.stringify(value, (_, v) => typeof v === "bigint"
    ? (JSON.rawJSON ? JSON.rawJSON(v.toString()) : v.toString()) : v, indent);
}

async function metricsText() {
  const headers = {};
  if (settings.token) headers.Authorization = "Bearer " + settings.token;
  const reply = await fetch("/metrics", { headers });
  if (!reply.ok) throw new ApiError(reply.status, "metrics", "the metrics need a token of scope metrics");
  return reply.text();
}

// Prometheus text format: [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

// ---- small DOM helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Headings of numeric columns end in " #": that column is right-aligned, the mark dropped.
function table(id, headings, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, headings.map(h => h.endsWith(" #") ? el("th", { class: "num" }, h.slice(0, -2)) : el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headings.length, class: "muted" }, "nothing yet"))));
}

function card(key, value, id) {
  return el("div", { class: "card" }, el("div", { class: "k" }, key), el("div", { class: "v", id }, value));
}

function badge(status) {
  return el("span", { class: "badge " + status }, status);
}

function when(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function duration(ms) {
  if (ms === undefined || ms === null) return "";
  if (ms === 0) return "< 1 ms";
  if (ms < 1) return (ms * 1000).toFixed(0) + " µs";
  if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 0) + " ms";
  return (ms / 1000).toFixed(1) + " s";
}

// "... until 1796690328511 ms since the epoch" with the time written out.
function humanTimes(text) {
  return text.replace(/(\d{12,}) ms since the epoch/g, (_, ms) => new Date(Number(ms)).toLocaleString());
}

function pretty(value) {
  if (typeof value === "string") {
    try { return jsonText(parseJson(value), 2); } catch (_) { return value; }
  }
  return jsonText(value, 2);
}

// A record's data: text if it is UTF-8, else base64.
function recordText(base64) {
  const bytes = Uint8Array.from(atob(base64), c => c.charCodeAt(0));
  try { return new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch (_) { return "base64:" + base64; }
}

function showError(e) {
  const box = document.getElementById("error");
  if (!e) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = e.status === 401
    ? "This gateway asks for a token: give one above (" + e.message + ")."
    : e.status === 403 ? "The token does not allow this: " + e.message : e.message;
}

// A line chart of named series, each a list of [time_ms, value] (null: a gap).
function chart(id, series, unit) {
  const w = 600, h = 140, pad = 28;
  const points = series.flatMap(s => s.points.filter(p => p[1] !== null));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  for (const [k, v] of Object.entries({ id, class: "chart", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" })) svg.setAttribute(k, v);
  if (!points.length) return el("p", { class: "muted", id }, "No samples yet: the chart starts with the second refresh.");
  const t0 = Math.min(...points.map(p => p[0])), t1 = Math.max(...points.map(p => p[0]), t0 + 1);
  const top = Math.max(...points.map(p => p[1])) * 1.1 || 1;
  const x = t => pad + (t - t0) / (t1 - t0) * (w - pad - 4);
  const y = v => h - 14 - v / top * (h - 24);
  const colors = ["#2f5bd3", "#d97706", "#15803d", "#b42318", "#7c3aed", "#0891b2"];
  let inner = "";
  series.forEach((s, i) => {
    const path = s.points.filter(p => p[1] !== null).map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    inner += `<polyline fill="none" stroke="${colors[i % colors.length]}" stroke-width="1.5" points="${path}"/>`;
  });
  svg.innerHTML = inner;
  const legend = el("div", { class: "legend" }, series.map((s, i) =>
    el("span", {}, el("i", { style: `background:${colors[i % colors.length]}` }), s.name)),
    el("span", { class: "muted" }, "over the last " + Math.round((t1 - t0) / 1000) + " s"));
  // The scale is HTML beside the SVG, which stretches to the page's width.
  return el("div", {}, el("div", { class: "chartbox" }, svg,
    el("span", { class: "ymax" }, fmt(top) + " " + unit), el("span", { class: "ymin" }, "0")), legend);
}

function fmt(v) {
  return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toPrecision(2);
}

// ---- samples kept across views, for the charts ---------------------------------------------

const history = { appends: [], latency: {}, last: null };

// Takes one sample of the counters the charts need: appends a second, and each function's
// mean latency over the interval.
function sample(text) {
  const now = Date.now();
  const samples = parseMetrics(text);
  const appended = samples.filter(s => s.name === "tally_appended_records_total").reduce((a, s) => a + s.value, 0);
  const fns = {};
  for (const s of samples) {
    const f = s.labels.function;
    if (!f) continue;
    fns[f] = fns[f] || { sum: 0, count: 0, buckets: [] };
    if (s.name === "tally_invocation_latency_seconds_sum") fns[f].sum = s.value;
    if (s.name === "tally_invocation_latency_seconds_count") fns[f].count = s.value;
    if (s.name === "tally_invocation_latency_seconds_bucket") fns[f].buckets.push([Number(s.labels.le), s.value]);
  }
  const last = history.last;
  if (last && now > last.at) {
    const dt = (now - last.at) / 1000;
    push(history.appends, [now, Math.max(0, appended - last.appended) / dt]);
    for (const [f, v] of Object.entries(fns)) {
      const before = last.fns[f] || { sum: 0, count: 0 };
      const calls = v.count - before.count;
      history.latency[f] = history.latency[f] || [];
      push(history.latency[f], [now, calls > 0 ? (v.sum - before.sum) / calls * 1000 : null]);
    }
  }
  history.last = { at: now, appended, fns };
  return fns;
}

function push(list, point) {
  list.push(point);
  if (list.length > SAMPLES) list.shift();
}

// The q-quantile of a cumulative histogram, in ms (the upper bound of its bucket).
function quantile(buckets, q) {
  const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
  const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (!total) return null;
  const found = sorted.find(([, count]) => count >= q * total);
  return found && isFinite(found[0]) ? found[0] * 1000 : null;
}

// ---- views ---------------------------------------------------------------------------------

const views = {};

views.cluster = {
  title: "Cluster",
  mount(root) {
    root.append(el("h1", {}, "Cluster"), el("div", { id: "cluster-body" }),
      el("h2", {}, "Appends a second"), el("div", { id: "append-chart" }));
  },
  async refresh() {
    const c = await api("/cluster");
    const body = el("div", { id: "cluster-body" });
    const g = c.gateway || {};
    body.append(el("div", { class: "cards" },
      card("Mode", c.mode === "cluster" ? "cluster" : "single node", "cluster-mode"),
      c.mode === "cluster" ? card("Leader", c.leader ? "sequencer " + c.leader : "none", "cluster-leader") : null,
      card("View", g.view ?? "", "cluster-view"),
      card("Metalog position", g.metalog_position ?? "", "cluster-metalog"),
      card("Gateways live", Object.keys(g.peers || {}).length, "cluster-gateways")));
    if (c.mode === "cluster") {
      const nodes = [];
      for (const [id, s] of Object.entries(c.sequencers || {})) {
        nodes.push(el("tr", { "data-node": "sequencer-" + id },
          el("td", {}, "sequencer"), el("td", {}, id),
          el("td", {}, s.error ? el("span", { class: "bad" }, s.error) : el("span", { class: "ok" }, "ok")),
          el("td", {}, s.is_leader ? "leader (term " + s.term + ")" : s.term !== undefined ? "follower (term " + s.term + ")" : ""),
          el("td", { class: "num" }, s.metalog_position ?? "")));
      }
      for (const [id, s] of Object.entries(c.storage || {})) {
        nodes.push(el("tr", { "data-node": "storage-" + id },
          el("td", {}, "storage"), el("td", {}, id),
          el("td", {}, s.error ? el("span", { class: "bad" }, s.error) : el("span", { class: "ok" }, s.waits_on ? "waits on " + s.waits_on : "ok")),
          el("td", {}, s.view !== undefined ? "view " + s.view : ""),
          el("td", { class: "num" }, s.applied ?? "")));
      }
      body.append(el("h2", {}, "Nodes"), table("nodes", ["Role", "Id", "Health", "State", "Position #"], nodes));
      const leader = (c.sequencers || {})[c.leader] || {};
      const shards = Object.entries(leader.shards || {}).map(([shard, s]) => {
        const durable = Object.values(s.durable || {});
        const lag = durable.length ? s.ordered - Math.min(...durable) : 0;
        return el("tr", { "data-shard": shard },
          el("td", {}, shard), el("td", { class: "num" }, s.ordered),
          el("td", {}, Object.entries(s.durable || {}).map(([n, d]) => `node ${n}: ${d}`).join(", ")),
          el("td", { class: "num" + (lag > 0 ? " warn" : "") }, lag));
      });
      body.append(el("h2", {}, "Shards (as the leader orders them)"),
        table("shards", ["Shard", "Ordered #", "Durable at replicas", "Lag #"], shards));
    } else {
      body.append(el("h2", {}, "This node"), table("nodes", ["Role", "Health", "Applied #", "Index records #", "Appends in flight #"], [
        el("tr", { "data-node": "single" }, el("td", {}, "sequencer, storage and gateway (tally up)"),
          el("td", { class: "ok" }, "ok"), el("td", { class: "num" }, g.applied ?? ""),
          el("td", { class: "num" }, g.index_records ?? ""), el("td", { class: "num" }, g.pending_appends ?? ""))]));
    }
    const peers = Object.entries(g.peers || {}).map(([name, addr]) =>
      el("tr", {}, el("td", {}, name + (name === g.name ? " (this one)" : "")), el("td", {}, addr || "")));
    body.append(el("h2", {}, "Gateways"), table("gateways", ["Gateway", "Address"], peers));
    document.getElementById("cluster-body").replaceWith(body);
    try {
      sample(await metricsText());
      document.getElementById("append-chart").replaceChildren(chart("appends", [{ name: "records appended a second", points: history.appends }], "/s"));
    } catch (e) {
      document.getElementById("append-chart").replaceChildren(el("p", { class: "muted" }, e.message));
    }
  },
};

views.log = {
  title: "Log",
  mount(root) {
    this.pages = [0];
    this.next = null;
    const form = el("form", { class: "bar", id: "log-form", onsubmit: e => { e.preventDefault(); this.pages = [Number(form.from.value) || 0]; this.refresh(); } },
      el("label", {}, "Tag (empty: every record)", el("input", { name: "tag", id: "log-tag", inputmode: "numeric", pattern: "[0-9]*" })),
      el("label", {}, "From seqnum", el("input", { name: "from", id: "log-from", type: "number", min: "0", value: "0" })),
      el("label", {}, "Per page", el("input", { name: "limit", id: "log-limit", type: "number", min: "1", max: "1000", value: "50" })),
      el("label", {}, "Live tail", el("input", { name: "tail", id: "log-tail", type: "checkbox" })),
      el("button", { type: "submit" }, "Read"),
      el("button", { type: "button", class: "secondary", id: "log-prev", onclick: () => { if (this.pages.length > 1) this.pages.pop(); this.refresh(); } }, "Previous page"),
      el("button", { type: "button", class: "secondary", id: "log-next", onclick: () => { if (this.next !== null) this.pages.push(this.next); this.refresh(); } }, "Next page"));
    this.form = form;
    this.tagsAfter = [null];
    root.append(el("h1", {}, "Log: book ", el("span", { id: "log-book" }, settings.book)),
      el("div", { class: "split" },
        el("div", {}, el("h2", {}, "Books"), el("div", { id: "books-body" })),
        el("div", {}, el("h2", {}, "Tags of this book"), el("div", { id: "tags-body" }))),
      el("h2", {}, "Records"), form, el("div", { id: "log-body" }));
  },
  // The books and this book's tags: a click on one reads it.
  async refreshCatalog() {
    const books = document.getElementById("books-body");
    try {
      const list = await api("/log");
      books.replaceChildren(table("books", ["Book", "Records #", "Tags #"], list.books.map(b =>
        el("tr", { "data-book": b.book, class: "pick" + (b.book === settings.book ? " chosen" : ""), onclick: () => {
          settings.book = b.book;
          document.getElementById("book").value = b.book;
          route();
        } }, el("td", {}, b.book), el("td", { class: "num" }, b.records), el("td", { class: "num" }, b.tags)))));
    } catch (e) {
      books.replaceChildren(el("p", { class: "muted" }, e.message));
    }
    const after = this.tagsAfter[this.tagsAfter.length - 1];
    const tags = await api(`/log/${settings.book}/tags?limit=20` + (after === null ? "" : "&after=" + after));
    this.tagsNext = tags.next ?? null;
    document.getElementById("tags-body").replaceChildren(
      table("tags", ["Tag", "Records #"], tags.tags.map(t => el("tr", { "data-tag": t.tag, class: "pick", onclick: () => {
        this.form.tag.value = t.tag;
        this.form.from.value = "0";
        this.pages = [0];
        this.refresh();
      } }, el("td", {}, t.tag), el("td", { class: "num" }, t.records)))),
      el("p", {},
        el("button", { type: "button", class: "secondary", id: "tags-prev", disabled: this.tagsAfter.length < 2,
          onclick: () => { this.tagsAfter.pop(); this.refresh(); } }, "Previous tags"), " ",
        el("button", { type: "button", class: "secondary", id: "tags-next", disabled: this.tagsNext === null,
          onclick: () => { this.tagsAfter.push(this.tagsNext); this.refresh(); } }, "More tags")));
  },
  async refresh() {
    await this.refreshCatalog();
    const f = this.form;
    const tail = f.tail.checked;
    const limit = Math.min(Math.max(Number(f.limit.value) || 50, 1), 1000);
    // Tags are 64-bit: the digits go as they are.
    const tag = f.tag.value.trim() === "" ? "" : "&tag=" + encodeURIComponent(f.tag.value.trim());
    let records;
    if (tail) {
      // The newest records: read from where the last page ended until the log's end.
      let from = this.tailFrom ?? this.pages[this.pages.length - 1];
      let all = this.tailRecords || [];
      for (;;) {
        const r = await api(`/log/${settings.book}/records?from=${from}&limit=1000${tag}`);
        all = all.concat(r.records);
        if (r.records.length) from = r.records[r.records.length - 1].seqnum + 1;
        if (r.next === null || r.next === undefined) break;
      }
      this.tailFrom = from;
      this.tailRecords = all.slice(-limit);
      records = this.tailRecords;
      this.next = null;
    } else {
      this.tailFrom = null;
      this.tailRecords = null;
      const from = this.pages[this.pages.length - 1];
      const r = await api(`/log/${settings.book}/records?from=${from}&limit=${limit}${tag}`);
      records = r.records;
      this.next = r.next ?? null;
    }
    const rows = records.map(r => el("tr", { "data-seqnum": r.seqnum },
      el("td", { class: "num" }, r.seqnum), el("td", {}, r.tags.join(", ")),
      el("td", {}, el("code", {}, recordText(r.data).slice(0, 300)))));
    document.getElementById("log-body").replaceChildren(
      el("p", { class: "muted" }, tail ? "Live: the newest " + records.length + " records" :
        "Page " + this.pages.length + (this.next !== null ? "; more follow" : "; the last page")),
      table("records", ["Seqnum #", "Tags", "Data"], rows));
    document.getElementById("log-next").disabled = this.next === null;
    document.getElementById("log-prev").disabled = this.pages.length < 2;
  },
};

views.functions = {
  title: "Functions",
  mount(root, args) {
    this.chosen = args[0] || null;
    const form = el("form", { class: "bar", id: "inv-form", onsubmit: e => { e.preventDefault(); this.refresh(); } },
      el("label", {}, "Function", el("select", { name: "function", id: "inv-function" }, el("option", { value: "" }, "any"))),
      el("label", {}, "Status", el("select", { name: "status", id: "inv-status" },
        ["", "pending", "running", "succeeded", "failed"].map(s => el("option", { value: s }, s || "any")))),
      el("button", { type: "submit" }, "Filter"));
    form.function.addEventListener("change", () => this.refresh());
    form.status.addEventListener("change", () => this.refresh());
    this.form = form;
    root.append(el("h1", {}, "Functions"),
      el("h2", {}, "Mean latency per function (ms)"), el("div", { id: "latency-chart" }),
      el("h2", {}, "Invocations at this gateway"), form,
      el("div", { class: "split" }, el("div", { id: "invocations-body" }), el("div", { id: "invocation-detail" })),
      el("h2", {}, "Every function"), el("div", { id: "functions-body" }));
  },
  async refresh() {
    const fns = await api("/functions");
    let stats = {};
    let metricsError = null;
    try { stats = sample(await metricsText()); } catch (e) { metricsError = e.message; }
    const select = this.form.function;
    const known = [...select.options].map(o => o.value);
    for (const name of fns.functions) if (!known.includes(name)) select.append(el("option", { value: name }, name));
    const rows = fns.functions.map(name => {
      const limits = fns.limits[name] || {};
      const s = stats[name];
      return el("tr", { "data-function": name, class: "pick", onclick: () => { select.value = name; this.refresh(); } },
        el("td", {}, name), el("td", {}, limits.worker ? "worker " + limits.worker : "in the gateway"),
        el("td", { class: "num" }, s ? s.count : ""), el("td", { class: "num" }, s ? duration(quantile(s.buckets, 0.5)) : ""),
        el("td", { class: "num" }, s ? duration(quantile(s.buckets, 0.99)) : ""),
        el("td", { class: "num" }, limits.max_concurrency ?? ""), el("td", { class: "num" }, limits.timeout_ms ?? ""),
        el("td", { class: "num" }, limits.retries ?? ""));
    });
    document.getElementById("functions-body").replaceChildren(
      table("functions", ["Function", "Runs", "Calls #", "p50 #", "p99 #", "Max concurrency #", "Timeout ms #", "Retries #"], rows));
    const series = Object.entries(history.latency).filter(([, p]) => p.some(x => x[1] !== null)).map(([name, points]) => ({ name, points }));
    document.getElementById("latency-chart").replaceChildren(metricsError ? el("p", { class: "muted" }, metricsError) : chart("latency", series, "ms"));
    const q = new URLSearchParams({ limit: "50" });
    if (select.value) q.set("function", select.value);
    if (this.form.status.value) q.set("status", this.form.status.value);
    const list = await api("/invocations?" + q);
    const invRows = list.invocations.map(inv => el("tr", {
      "data-invocation": inv.id, class: "pick" + (inv.id === this.chosen ? " chosen" : ""),
      onclick: () => { this.chosen = inv.id; location.hash = "#/functions/" + inv.id; },
    },
      el("td", {}, el("code", {}, inv.id)), el("td", {}, inv.function), el("td", {}, badge(inv.status)),
      el("td", {}, when(inv.created_at_ms)),
      el("td", { class: "num" }, inv.finished_at_ms && inv.started_at_ms ? duration(inv.finished_at_ms - inv.started_at_ms) : ""),
      el("td", { class: "num" }, inv.attempts)));
    document.getElementById("invocations-body").replaceChildren(
      table("invocations", ["Id", "Function", "Status", "Created", "Took #", "Attempts #"], invRows));
    const detail = document.getElementById("invocation-detail");
    if (!this.chosen) { detail.replaceChildren(el("p", { class: "muted" }, "Pick an invocation to see its input and output.")); return; }
    const inv = await api("/invocations/" + encodeURIComponent(this.chosen));
    const input = (list.invocations.find(i => i.id === inv.id) || {}).input;
    detail.replaceChildren(el("div", { id: "invocation" },
      el("h2", {}, "Invocation ", el("code", {}, inv.id)),
      el("p", {}, inv.function, " ", badge(inv.status), inv.durable ? " durable" : "",
        " · created ", when(inv.created_at_ms), inv.started_at_ms ? " · started " + when(inv.started_at_ms) : "",
        inv.finished_at_ms ? " · finished " + when(inv.finished_at_ms) : "", " · attempts ", inv.attempts),
      input !== undefined ? [el("h2", {}, "Input"), el("pre", { id: "invocation-input" }, pretty(input))] : null,
      inv.output !== undefined ? [el("h2", {}, "Output"), el("pre", { id: "invocation-output" }, pretty(inv.output))] : null,
      inv.error !== undefined ? [el("h2", {}, "Error"), el("pre", { id: "invocation-error", class: "bad" }, inv.error)] : null));
  },
};

views.workflows = {
  title: "Workflows",
  mount(root, args) {
    this.id = args[0] ? decodeURIComponent(args[0]) : null;
    if (this.id) {
      root.append(el("p", {}, el("a", { href: "#/workflows" }, "← all workflows")),
        el("h1", {}, "Workflow ", el("code", {}, this.id)), el("div", { id: "workflow-body" }),
        el("h2", {}, "Signal or cancel"),
        el("form", { class: "bar", id: "signal-form", onsubmit: e => { e.preventDefault(); this.signal(e.target); } },
          el("label", {}, "Signal", el("input", { name: "name", id: "signal-name", required: true })),
          el("label", {}, "Payload (JSON)", el("input", { name: "payload", id: "signal-payload", value: "null", size: 30 })),
          el("button", { type: "submit", id: "signal-send" }, "Send signal"),
          el("button", { type: "button", class: "danger", id: "cancel", onclick: () => this.cancel() }, "Cancel workflow")),
        el("p", { id: "action-result", class: "muted" }));
      return;
    }
    const form = el("form", { class: "bar", onsubmit: e => e.preventDefault() },
      el("label", {}, "Status", el("select", { id: "wf-status", onchange: () => this.refresh() },
        ["", "running", "succeeded", "failed", "compensated", "cancelled"].map(s => el("option", { value: s }, s || "any")))));
    root.append(el("h1", {}, "Workflows"), form, el("div", { id: "workflows-body" }));
  },
  async refresh() {
    if (this.id) return this.refreshOne();
    const status = document.getElementById("wf-status").value;
    const list = await api("/workflows?limit=100" + (status ? "&status=" + status : ""));
    const rows = list.instances.map(i => el("tr", { "data-instance": i.id, class: "pick", onclick: () => { location.hash = "#/workflows/" + encodeURIComponent(i.id); } },
      el("td", {}, el("code", {}, i.id)), el("td", {}, i.workflow), el("td", {}, badge(i.status)), el("td", {}, when(i.started_at_ms))));
    document.getElementById("workflows-body").replaceChildren(table("workflows", ["Instance", "Workflow", "Status", "Started"], rows));
  },
  async refreshOne() {
    const w = await api("/workflows/" + encodeURIComponent(this.id));
    const end = w.ended_at_ms || Date.now();
    const span = Math.max(end - w.started_at_ms, 1);
    const steps = w.steps.filter(s => s.op !== "start");
    const marks = steps.map((s, i) => {
      const next = i + 1 < steps.length ? steps[i + 1].at_ms : end;
      const left = (s.at_ms - w.started_at_ms) / span * 100;
      const width = Math.max((next - s.at_ms) / span * 100, 0.3);
      return el("div", { class: "row", "data-step": s.position },
        el("div", {}, el("b", {}, s.op), " ", s.name || "", s.status === "failed" ? el("span", { class: "bad" }, " failed") : ""),
        el("div", { class: "track" }, el("div", {
          class: "mark" + (s.status === "failed" ? " failed" : ""),
          style: `left:${left.toFixed(2)}%;width:${Math.min(width, 100 - left).toFixed(2)}%`,
          title: `${s.op} ${s.name || ""} at +${duration(s.at_ms - w.started_at_ms)}`,
        })));
    });
    const body = el("div", { id: "workflow-body" },
      el("div", { class: "cards" },
        card("Workflow", w.workflow, "wf-name"), card("Status", badge(w.status), "wf-state"),
        card("Waiting for", w.waiting ? humanTimes(w.waiting) : "nothing", "wf-waiting"),
        card("Started", when(w.started_at_ms)), card("Took", w.ended_at_ms ? duration(w.ended_at_ms - w.started_at_ms) : "running")),
      el("div", { class: "split" },
        el("div", {}, el("h2", {}, "Input"), el("pre", { id: "wf-input" }, pretty(w.input))),
        el("div", {}, w.output !== undefined ? [el("h2", {}, "Output"), el("pre", { id: "wf-output" }, pretty(w.output))] : null,
          w.error ? [el("h2", {}, "Error"), el("pre", { id: "wf-error", class: "bad" }, w.error)] : null)),
      el("h2", {}, "Timeline"), el("div", { class: "timeline", id: "timeline" }, marks.length ? marks : el("p", { class: "muted" }, "no steps yet")),
      el("h2", {}, "Steps"),
      table("steps", ["Position #", "Operation", "Name", "Outcome", "Attempts #", "At"], w.steps.map(s => el("tr", {},
        el("td", { class: "num" }, s.position), el("td", {}, s.op), el("td", {}, s.name || ""),
        el("td", {}, s.status ? badge(s.status) : ""), el("td", { class: "num" }, s.attempts ?? ""),
        el("td", {}, "+" + duration(s.at_ms - w.started_at_ms))))));
    document.getElementById("workflow-body").replaceWith(body);
    const running = w.status === "running";
    document.getElementById("signal-send").disabled = !running;
    document.getElementById("cancel").disabled = !running;
  },
  async signal(form) {
    const result = document.getElementById("action-result");
    let payload;
    try { payload = parseJson(form.payload.value || "null"); } catch (e) { result.textContent = "The payload is not JSON: " + e.message; return; }
    await act(result, () => api(`/workflows/${encodeURIComponent(this.id)}/signals/${encodeURIComponent(form.name.value)}`,
      { method: "POST", body: jsonText(payload), headers: { "Content-Type": "application/json" } }), "Signal " + form.name.value + " sent.");
    this.refresh();
  },
  async cancel() {
    await act(document.getElementById("action-result"),
      () => api(`/workflows/${encodeURIComponent(this.id)}/cancel`, { method: "POST" }), "Cancelled.");
    this.refresh();
  },
};

async function act(result, call, done) {
  try {
    await call();
    result.textContent = done;
    result.className = "ok";
  } catch (e) {
    result.textContent = e.message;
    result.className = "bad";
  }
}

views.objects = {
  title: "Objects",
  mount(root, args) {
    const form = el("form", { class: "bar", id: "object-form", onsubmit: e => { e.preventDefault(); location.hash = `#/objects/${encodeURIComponent(form.collection.value)}/${encodeURIComponent(form.key.value)}`; } },
      el("label", {}, "Collection", el("input", { name: "collection", id: "object-collection", required: true, value: args[0] ? decodeURIComponent(args[0]) : "" })),
      el("label", {}, "Key", el("input", { name: "key", id: "object-key", required: true, value: args[1] ? decodeURIComponent(args[1]) : "" })),
      el("button", { type: "submit" }, "Show"));
    this.target = args.length >= 2 ? args.map(decodeURIComponent) : null;
    root.append(el("h1", {}, "Objects"), form, el("div", { id: "object-body" }));
  },
  async refresh() {
    const body = document.getElementById("object-body");
    if (!this.target) { body.replaceChildren(el("p", { class: "muted" }, "Name an object (a collection and a key) to see its state and every change.")); return; }
    const [c, k] = this.target.map(encodeURIComponent);
    let doc;
    try { doc = await api(`/objects/${c}/${k}`); } catch (e) { if (e.status !== 404) throw e; doc = undefined; }
    // Oldest first, a page at a time: the newest 200 changes are shown, newest first.
    let changes = [];
    let after = null;
    for (let page = 0; page < 50; page++) {
      const h = await api(`/objects/${c}/${k}/history` + (after === null ? "" : "?after=" + after));
      changes = changes.concat(h.changes).slice(-200);
      if (h.next === null || h.next === undefined) break;
      after = h.next;
    }
    body.replaceChildren(
      el("h2", {}, "State"), el("pre", { id: "object-doc" }, doc === undefined ? "(no such object)" : pretty(doc)),
      el("h2", {}, "History"),
      table("history", ["Seqnum #", "Kind", "Operations", "Took effect"], changes.reverse().map(ch => el("tr", { "data-seqnum": ch.seqnum },
        el("td", { class: "num" }, ch.seqnum), el("td", {}, ch.kind), el("td", {}, el("code", {}, jsonText(ch.ops))),
        el("td", {}, ch.applied ? badge("ok") : el("span", { class: "bad" }, "no: " + (ch.reason || "")))))));
  },
};

views.queues = {
  title: "Queues",
  mount(root) {
    this.names = JSON.parse(localStorage.getItem("tally.queues") || "[]");
    const form = el("form", { class: "bar", id: "queue-form", onsubmit: e => {
      e.preventDefault();
      const name = form.name.value.trim();
      if (name && !this.names.includes(name)) { this.names.push(name); localStorage.setItem("tally.queues", JSON.stringify(this.names)); }
      form.name.value = "";
      this.refresh();
    } }, el("label", {}, "Queue", el("input", { name: "name", id: "queue-name" })), el("button", { type: "submit" }, "Add"));
    root.append(el("h1", {}, "Queues"), form, el("div", { id: "queues-body" }));
  },
  async refresh() {
    const open = await api("/queues");
    const names = [...new Set([...open.queues, ...this.names])].sort();
    const sections = [];
    for (const name of names) {
      let stat;
      try { stat = await api("/queues/" + encodeURIComponent(name)); } catch (e) {
        sections.push(el("section", { "data-queue": name }, el("h2", {}, name), el("p", { class: "bad" }, e.message)));
        continue;
      }
      const groups = [];
      for (const g of stat.groups) {
        groups.push(el("tr", { "data-group": g.name },
          el("td", {}, g.name), el("td", { class: "num" }, g.lag), el("td", { class: "num" }, g.in_flight),
          el("td", { class: "num" }, g.acked), el("td", { class: "num" + (g.dead_letters ? " bad" : "") }, g.dead_letters),
          el("td", { class: "num" }, g.oldest_age_ms === null ? "" : duration(g.oldest_age_ms))));
      }
      const dead = [];
      for (const g of stat.groups.filter(g => g.dead_letters > 0)) {
        const d = await api(`/queues/${encodeURIComponent(name)}/groups/${encodeURIComponent(g.name)}/dead-letters`);
        for (const m of d.dead_letters || []) dead.push(el("tr", {}, el("td", {}, g.name), el("td", {}, el("code", {}, m.id)),
          el("td", { class: "num" }, m.deliveries ?? ""), el("td", {}, el("code", {}, recordText(m.data || "").slice(0, 200)))));
      }
      sections.push(el("section", { "data-queue": name },
        el("h2", {}, name),
        el("div", { class: "cards" }, card("Length", stat.length, "queue-length-" + name), card("Shards", stat.shards), card("Groups", stat.groups.length)),
        el("h2", {}, "Consumer groups"), table(null, ["Group", "Lag #", "In flight #", "Acked #", "Dead letters #", "Oldest waiting #"], groups),
        dead.length ? [el("h2", {}, "Dead letters"), table(null, ["Group", "Message", "Deliveries #", "Data"], dead)] : null));
    }
    document.getElementById("queues-body").replaceChildren(...(sections.length ? sections :
      [el("p", { class: "muted" }, "No queue used at this gateway yet: name one above.")]));
  },
};

// ---- the router and the refresh loop -------------------------------------------------------

let current = null;
let busy = false;
// A refresh asked for while one runs: run again when it ends (a new view must not wait).
let again = false;

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "cluster").split("/");
  const name = views[parts[0]] ? parts[0] : "cluster";
  const view = views[name];
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("current", a.dataset.page === name);
  document.title = view.title + " · Tally console";
  const root = document.getElementById("page");
  root.replaceChildren();
  root.dataset.view = name;
  root.dataset.route = [name, ...parts.slice(1)].join("/");
  delete root.dataset.loaded;
  current = view;
  view.mount(root, parts.slice(1));
  refresh();
}

async function refresh() {
  if (!current) return;
  if (busy) { again = true; return; }
  busy = true;
  const view = current;
  try {
    await view.refresh();
    if (view === current) {
      showError(null);
      document.getElementById("live").textContent = "live · " + new Date().toLocaleTimeString();
      document.getElementById("page").dataset.loaded = "true";
    }
  } catch (e) {
    showError(e);
  } finally {
    busy = false;
    if (again) { again = false; refresh(); }
  }
}

document.getElementById("settings").addEventListener("submit", e => {
  e.preventDefault();
  settings.token = document.getElementById("token").value.trim();
  settings.book = Number(document.getElementById("book").value) || 0;
  route();
});
document.getElementById("token").value = settings.token;
document.getElementById("book").value = settings.book;
window.addEventListener("hashchange", route);
setInterval(refresh, REFRESH_MS);
route();
