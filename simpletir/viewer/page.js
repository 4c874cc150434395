// simpletir view: the page's whole behaviour. Reads the index (JSON in #st-index); each
// problem's samples sit gzip+base64 in <script type="text/plain" id="d-N"> and are decompressed
// only when that problem is opened, so a 500 x 32 evaluation loads as fast as its table.
"use strict";

const INDEX = JSON.parse(document.getElementById("st-index").textContent);
const PAGE_SIZE = 50;
const state = { tab: "overview", run: 0, set: 0, filter: "all", query: "", sort: ["key", 1], page: 0,
                open: null, cmp: { a: 0, b: 0, filter: "differ", sort: ["delta", -1], page: 0, open: null } };
const cache = new Map();

// -- small DOM helpers (text always goes through textContent: responses are never HTML) ------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? "-" : (100 * x).toFixed(1));
const num = (x, d = 3) => (x === null || x === undefined ? "-" : typeof x === "number" ? (Math.abs(x) >= 1000 || Number.isInteger(x) ? String(Math.round(x * 1000) / 1000) : x.toPrecision(d)) : String(x));

async function detail(n) {
  if (cache.has(n)) return cache.get(n);
  const node = document.getElementById("d-" + n);
  if (!node) throw new Error("no detail record " + n);
  const bytes = Uint8Array.from(atob(node.textContent.trim()), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const value = JSON.parse(await new Response(stream).text());
  cache.set(n, value);
  return value;
}

// -- layout ---------------------------------------------------------------------------------
function render() {
  const nav = document.getElementById("nav");
  nav.replaceChildren();
  const tabs = [["overview", "Overview"], ["problems", "Problems"]];
  if (INDEX.runs.length > 1) tabs.push(["compare", "Compare runs"]);
  for (const [id, title] of tabs) {
    nav.append(h("button", { class: state.tab === id ? "on" : "", "data-tab": id, onclick: () => { state.tab = id; render(); } }, title));
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  if (state.tab === "overview") main.append(overview());
  else if (state.tab === "problems") main.append(problems());
  else main.append(compare());
}

// -- overview -------------------------------------------------------------------------------
function overview() {
  const out = h("div", {});
  INDEX.runs.forEach((run, r) => {
    out.append(h("h2", {}, `${run.name}`, h("span", { class: "muted" }, `  ${run.kind} run, ${run.path}`)));
    for (const n of run.notes) out.append(h("div", { class: "note" }, n));
    const kv = h("table", { class: "kv" });
    for (const [k, v] of Object.entries(run.settings)) kv.append(h("tr", {}, h("th", { class: "l" }, k), h("td", { class: "l" }, JSON.stringify(v))));
    out.append(kv);
    if (run.sets.length) {
      out.append(h("h3", {}, "Trajectories: per set and benchmark (rates in %)"));
      const cols = ["problems", "samples", "pass@1", "pass@n", "answer_rate", "void_rate", "trunc_rate", "tool_use_rate", "tool_error_rate", "kept_groups"];
      const t = h("table", {}, h("tr", {}, h("th", { class: "l" }, "set"), h("th", { class: "l" }, "benchmark"), cols.map((c) => h("th", {}, c.replace("_rate", "").replace("_", " ")))));
      run.sets.forEach((set, s) => {
        for (const [bench, m] of Object.entries(set.summary)) {
          t.append(h("tr", { class: "row", onclick: () => { Object.assign(state, { tab: "problems", run: r, set: s, page: 0, open: null }); render(); } },
            h("td", { class: "l" }, set.label), h("td", { class: "l" }, bench),
            cols.map((c) => h("td", {}, m[c] === undefined ? "" : ["problems", "samples", "kept_groups"].includes(c) ? m[c] : pct(m[c])))));
        }
      });
      out.append(t, h("div", { class: "note" }, "pass@n: problems with at least one correct sample. Click a row to browse its problems."));
    }
    if (run.steps.length) {
      out.append(h("h3", {}, `Training steps (${run.steps.length})`));
      const keys = [...new Set(run.steps.flatMap((s) => Object.keys(s)))];
      const t = h("table", {}, h("tr", {}, keys.map((k) => h("th", {}, k))));
      for (const s of run.steps) t.append(h("tr", {}, keys.map((k) => h("td", {}, num(s[k], 4)))));
      out.append(h("div", { class: "scroll" }, t));
    }
  });
  return out;
}

// -- the problem table ----------------------------------------------------------------------
const FILTERS = {
  all: () => true,
  solved: (p) => p.correct > 0,
  unsolved: (p) => p.correct === 0,
  void: (p) => p.void > 0,
  truncated: (p) => p.trunc > 0,
  "tool error": (p) => p.toolerr > 0,
  kept: (p) => p.kept === true,
  dropped: (p) => p.kept === false,
};
const COLUMNS = [["pid", "problem", "l"], ["bench", "benchmark", "l"], ["q", "question", "l"], ["n", "samples"], ["pass", "pass rate"],
                 ["void", "void"], ["trunc", "truncated"], ["toolerr", "tool error"], ["answered", "answered"], ["tokens", "tokens"]];

function sorted(rows, [key, dir]) {
  return [...rows].sort((a, b) => {
    const x = a[key], y = b[key];
    if (typeof x === "number" && typeof y === "number") return dir * (x - y);
    return dir * String(x).localeCompare(String(y), undefined, { numeric: true });
  });
}

function problems() {
  const out = h("div", {});
  const run = INDEX.runs[state.run];
  if (!run || !run.sets.length) return h("p", {}, "This run has no trajectories to show (see the notes on the overview).");
  const set = run.sets[Math.min(state.set, run.sets.length - 1)];
  const bar = h("div", { class: "bar" });
  if (INDEX.runs.length > 1) {
    bar.append(h("select", { id: "run-select", onchange: (e) => { Object.assign(state, { run: +e.target.value, set: 0, page: 0, open: null }); render(); } },
      INDEX.runs.map((r, i) => h("option", { value: i, selected: i === state.run }, r.name))));
  }
  bar.append(h("select", { id: "set-select", onchange: (e) => { Object.assign(state, { set: +e.target.value, page: 0, open: null }); render(); } },
    run.sets.map((s, i) => h("option", { value: i, selected: i === state.set }, s.label))));
  const training = set.kind === "training";
  for (const name of Object.keys(FILTERS)) {
    if (!training && (name === "kept" || name === "dropped")) continue;
    const count = set.rows.filter(FILTERS[name]).length;
    bar.append(h("button", { class: "chip" + (state.filter === name ? " on" : ""), "data-filter": name, onclick: () => { Object.assign(state, { filter: name, page: 0 }); render(); } }, `${name} (${count})`));
  }
  const search = h("input", { type: "search", placeholder: "search question / id", value: state.query });
  search.addEventListener("change", (e) => { Object.assign(state, { query: e.target.value, page: 0 }); render(); });
  bar.append(search);
  out.append(bar);
  for (const n of set.notes) out.append(h("div", { class: "note" }, n));

  const q = state.query.toLowerCase();
  let rows = set.rows.filter(FILTERS[state.filter]).filter((p) => !q || p.q.toLowerCase().includes(q) || String(p.pid).toLowerCase().includes(q));
  rows = sorted(rows, state.sort);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  out.append(pager(rows.length, pages, state.page, (p) => { state.page = p; render(); }));
  const cols = training ? [...COLUMNS, ["kept", "kept"]] : COLUMNS;
  const table = h("table", { id: "problem-table" }, h("tr", {}, cols.map(([key, title, cls]) =>
    h("th", { class: "sort " + (cls || ""), onclick: () => { state.sort = [key, state.sort[0] === key ? -state.sort[1] : 1]; render(); } },
      title + (state.sort[0] === key ? (state.sort[1] > 0 ? " \u25b2" : " \u25bc") : "")))));
  for (const p of rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE)) {
    table.append(h("tr", { class: "row" + (state.open === p.d ? " sel" : ""), "data-key": p.key, onclick: () => { state.open = p.d; render(); } },
      h("td", { class: "l" }, p.pid), h("td", { class: "l" }, p.bench), h("td", { class: "l" }, p.q.length > 110 ? p.q.slice(0, 110) + "\u2026" : p.q),
      h("td", {}, p.n), h("td", { class: p.correct ? "ok" : "bad" }, `${p.correct}/${p.n}`), h("td", {}, p.void || ""), h("td", {}, p.trunc || ""),
      h("td", {}, p.toolerr || ""), h("td", {}, p.answered), h("td", {}, p.tokens),
      training ? h("td", { class: p.kept ? "ok" : "muted" }, p.kept ? "kept" : "dropped") : null));
  }
  out.append(table);
  if (state.open !== null) {
    const holder = h("div", { class: "detail", id: "detail" }, h("p", { class: "muted" }, "loading\u2026"));
    out.append(holder);
    showProblem(holder, state.open, set.kind);
  }
  return out;
}

function pager(count, pages, page, go) {
  return h("div", { class: "pager" },
    h("button", { disabled: page === 0, onclick: () => go(page - 1) }, "\u2039 prev"),
    h("span", {}, `page ${page + 1} of ${pages} (${count} problems)`),
    h("button", { disabled: page >= pages - 1, onclick: () => go(page + 1) }, "next \u203a"));
}

// -- one problem and its samples -------------------------------------------------------------
async function showProblem(holder, n, kind) {
  try {
    const p = await detail(n);
    holder.replaceChildren(problemView(p, kind));
  } catch (err) {
    holder.replaceChildren(h("p", { class: "bad" }, "could not open this problem: " + err));
  }
}

function problemView(p, kind) {
  const box = h("div", { class: "problem" },
    h("div", {}, h("b", {}, `${p.benchmark} / ${p.id}`), "  ground truth: ", h("code", {}, p.ground_truth),
      p.kept === undefined ? "" : h("span", { class: "badge " + (p.kept ? "ok" : "muted") }, p.kept ? "kept by the filters" : "dropped by the filters"),
      p.draw ? h("span", { class: "badge" }, `draw ${p.draw}`) : ""),
    h("pre", { class: "q" }, p.question));
  p.samples.forEach((s, i) => box.append(sampleView(s, i === 0)));
  if (p.hidden) box.append(h("div", { class: "note" }, `${p.hidden} more samples are not in this file (--samples)`));
  return box;
}

function verdict(s) {
  if (s.score === null || s.score === undefined) return h("span", { class: "badge muted" }, "unscored");
  const label = s.score > 0 ? "correct" : "wrong";
  return h("span", { class: "badge " + (s.score > 0 ? "ok" : "bad") }, s.reason === label ? label : `${label}: ${s.reason}`);
}

function sampleView(s, openNow) {
  const body = h("div", { class: "body" });
  let mode = "turns";
  const draw = () => {
    body.replaceChildren();
    if (s.tok) {
      const modes = [["turns", "turns"], ["mask", "loss mask"], ["logprob", "log-prob heat map"]];
      body.append(h("div", { class: "bar" }, modes.map(([m, title]) =>
        h("button", { class: "chip" + (mode === m ? " on" : ""), "data-mode": m, onclick: () => { mode = m; draw(); } }, title))));
    }
    body.append(mode === "turns" ? turnsView(s) : tokensView(s, mode));
  };
  const head = h("div", { class: "head" },
    h("b", {}, `sample ${s.i}`), verdict(s),
    h("span", {}, "answer: ", h("code", {}, s.answer === null || s.answer === undefined ? "(none)" : s.answer)),
    h("span", { class: "muted" }, `finish: ${s.finish}${s.truncated ? ` (truncated: ${s.trunc_cause})` : ""}, ${s.turns.length} turns, ${s.response_tokens} tokens`),
    s.adv === null || s.adv === undefined ? "" : h("span", {}, `advantage ${num(s.adv, 3)}`),
    s.masked && s.masked.length ? h("span", { class: "badge warn" }, "masked by " + s.masked.join(", ")) : "",
    s.loss_tokens === undefined ? "" : h("span", { class: "muted" }, `${s.loss_tokens} loss tokens`));
  const card = h("div", { class: "sample" }, head);
  let shown = false;
  const toggle = () => { shown = !shown; if (shown) { draw(); card.append(body); } else body.remove(); };
  head.addEventListener("click", toggle);
  if (openNow) toggle();
  return card;
}

function turnsView(s) {
  const out = h("div", {});
  if (s.prompt) out.append(h("details", {}, h("summary", { class: "muted" }, "prompt as the model saw it"), h("pre", { class: "text" }, s.prompt)));
  s.turns.forEach((t, k) => {
    const turn = h("div", { class: "turn" + (t.void ? " void" : "") },
      h("div", { class: "label" }, `turn ${k}`, t.void ? h("span", { class: "badge warn" }, "void turn") : "", t.truncated ? h("span", { class: "badge warn" }, "truncated") : "",
        t.stop ? h("span", { class: "muted" }, ` stop: ${t.stop}`) : ""),
      h("pre", { class: "text" }, t.text));
    if (t.code !== undefined) turn.append(h("div", { class: "label" }, "code"), h("pre", { class: "code" }, t.code));
    if (t.tool) {
      const r = t.tool;
      const why = r.ok ? "ok" : r.timed_out ? "timed out" : r.killed_by ? `killed (${r.killed_by})` : r.error ? `tool error: ${r.error}` : `exit code ${r.exit_code}`;
      turn.append(h("div", { class: "label" }, "sandbox ", h("span", { class: "badge " + (r.ok ? "ok" : "bad") }, why), h("span", { class: "muted" }, ` ${r.ms} ms`)));
      if (r.stdout) turn.append(h("pre", { class: "out" }, r.stdout));
      if (r.stderr) turn.append(h("pre", { class: "err" }, r.stderr));
      if (!r.stdout && !r.stderr) turn.append(h("div", { class: "note" }, "(no output)"));
    }
    if (t.final !== undefined) turn.append(h("div", { class: "label" }, "final answer: ", h("code", {}, t.final)));
    out.append(turn);
  });
  const extra = Object.keys(s.extra || {}).length ? " " + JSON.stringify(s.extra) : "";
  out.append(h("div", { class: "label" }, "reward: ", verdict(s), "extracted answer: ", h("code", {}, s.answer ?? "(none)"), h("span", { class: "muted" }, extra)));
  return out;
}

function heat(lp) {
  // probability 1 -> green, 0.5 -> yellow, ~0 -> red
  const p = Math.exp(Math.max(lp, -20));
  return `hsl(${Math.round(120 * p)}, 75%, ${82 - 8 * p}%)`;
}

function tokensView(s, mode) {
  const tok = s.tok;
  const obs = new Uint8Array(tok.s.length);
  for (const [a, b] of tok.obs) obs.fill(1, a, b);
  const box = h("div", { class: "tokens", "data-view": mode });
  const frag = document.createDocumentFragment();
  for (let i = 0; i < tok.s.length; i++) {
    const span = document.createElement("span");
    span.textContent = tok.s[i];
    const trained = tok.m[i] === 1;
    span.title = `#${i} ${obs[i] ? "tool output (never trained)" : trained ? "trained" : "not trained"}${obs[i] ? "" : `, log p ${tok.lp[i].toFixed(3)}`}`;
    if (mode === "mask") span.className = obs[i] ? "ob" : trained ? "tr" : "nt";
    else if (!obs[i]) span.style.background = heat(tok.lp[i]);
    else span.className = "ob";
    frag.append(span);
  }
  box.append(frag);
  const legend = mode === "mask"
    ? h("div", { class: "legend" }, h("span", { class: "tr" }, "trained (loss mask 1)"), h("span", { class: "nt" }, "generated, not trained"), h("span", { class: "ob" }, "tool output"),
        h("span", { class: "muted" }, `${tok.m.reduce((a, b) => a + b, 0)} of ${tok.s.length} tokens trained`))
    : h("div", { class: "legend" }, h("span", { style: `background:${heat(0)}` }, "p = 1"), h("span", { style: `background:${heat(Math.log(0.5))}` }, "p = 0.5"),
        h("span", { style: `background:${heat(-8)}` }, "p \u2248 0"), h("span", { class: "muted" }, "engine log-probs of the sampled tokens (hover a token for its value); entropy and trainer log-probs are not recorded"));
  return h("div", { class: "tokens-wrap" }, legend, box);
}

// -- two runs side by side -------------------------------------------------------------------
function compare() {
  const [ra, rb] = INDEX.runs;
  const out = h("div", {});
  if (!ra.sets.length || !rb.sets.length) return h("p", {}, "Both runs need trajectories to compare.");
  if (state.cmp.init === undefined) {  // start on the last set label the two runs share
    const labels = rb.sets.map((s) => s.label);
    let a = ra.sets.length - 1;
    for (let i = ra.sets.length - 1; i >= 0; i--) if (labels.includes(ra.sets[i].label)) { a = i; break; }
    state.cmp.a = a;
    state.cmp.b = Math.max(0, labels.lastIndexOf(ra.sets[a].label));
    state.cmp.init = true;
  }
  const A = ra.sets[state.cmp.a], B = rb.sets[state.cmp.b];
  const bar = h("div", { class: "bar" },
    h("b", {}, ra.name), h("select", { id: "cmp-a", onchange: (e) => { Object.assign(state.cmp, { a: +e.target.value, page: 0, open: null }); render(); } }, ra.sets.map((s, i) => h("option", { value: i, selected: i === state.cmp.a }, s.label))),
    h("span", {}, "vs"),
    h("b", {}, rb.name), h("select", { id: "cmp-b", onchange: (e) => { Object.assign(state.cmp, { b: +e.target.value, page: 0, open: null }); render(); } }, rb.sets.map((s, i) => h("option", { value: i, selected: i === state.cmp.b }, s.label))));
  const byKey = new Map(B.rows.map((p) => [p.bench + "\u0000" + p.pid, p]));
  let rows = [];
  for (const a of A.rows) {
    const b = byKey.get(a.bench + "\u0000" + a.pid);
    if (b) rows.push({ pid: a.pid, bench: a.bench, q: a.q, a, b, passA: a.pass, passB: b.pass, delta: b.pass - a.pass, voidA: a.void / a.n, voidB: b.void / b.n });
  }
  const filters = { differ: (r) => r.delta !== 0, [`${rb.name} better`]: (r) => r.delta > 0, [`${ra.name} better`]: (r) => r.delta < 0, all: () => true };
  if (!(state.cmp.filter in filters)) state.cmp.filter = "differ";
  for (const name of Object.keys(filters)) {
    bar.append(h("button", { class: "chip" + (state.cmp.filter === name ? " on" : ""), onclick: () => { Object.assign(state.cmp, { filter: name, page: 0 }); render(); } }, `${name} (${rows.filter(filters[name]).length})`));
  }
  out.append(bar);
  const mean = (xs) => (xs.length ? xs.reduce((x, y) => x + y, 0) / xs.length : NaN);
  out.append(h("div", { class: "note" }, `${rows.length} problems in both; mean pass rate ${pct(mean(rows.map((r) => r.passA)))}% vs ${pct(mean(rows.map((r) => r.passB)))}%, ` +
    `void-turn samples ${pct(mean(rows.map((r) => r.voidA)))}% vs ${pct(mean(rows.map((r) => r.voidB)))}%`));
  rows = sorted(rows.filter(filters[state.cmp.filter]), state.cmp.sort);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.cmp.page = Math.min(state.cmp.page, pages - 1);
  out.append(pager(rows.length, pages, state.cmp.page, (p) => { state.cmp.page = p; render(); }));
  const cols = [["pid", "problem", "l"], ["bench", "benchmark", "l"], ["q", "question", "l"], ["passA", `pass ${ra.name}`], ["passB", `pass ${rb.name}`], ["delta", "\u0394"], ["voidA", `void ${ra.name}`], ["voidB", `void ${rb.name}`]];
  const table = h("table", { id: "compare-table" }, h("tr", {}, cols.map(([key, title, cls]) =>
    h("th", { class: "sort " + (cls || ""), onclick: () => { state.cmp.sort = [key, state.cmp.sort[0] === key ? -state.cmp.sort[1] : -1]; render(); } }, title))));
  for (const r of rows.slice(state.cmp.page * PAGE_SIZE, (state.cmp.page + 1) * PAGE_SIZE)) {
    table.append(h("tr", { class: "row" + (state.cmp.open === r.a.d ? " sel" : ""), onclick: () => { state.cmp.open = r.a.d; state.cmp.openB = r.b.d; render(); } },
      h("td", { class: "l" }, r.pid), h("td", { class: "l" }, r.bench), h("td", { class: "l" }, r.q.length > 90 ? r.q.slice(0, 90) + "\u2026" : r.q),
      h("td", {}, `${r.a.correct}/${r.a.n}`), h("td", {}, `${r.b.correct}/${r.b.n}`), h("td", { class: r.delta > 0 ? "ok" : r.delta < 0 ? "bad" : "" }, pct(r.delta)),
      h("td", {}, pct(r.voidA)), h("td", {}, pct(r.voidB))));
  }
  out.append(table);
  if (state.cmp.open !== null) {
    const left = h("div", {}, h("h3", {}, ra.name), h("div", { class: "muted" }, "loading\u2026"));
    const right = h("div", {}, h("h3", {}, rb.name), h("div", { class: "muted" }, "loading\u2026"));
    out.append(h("div", { class: "split detail" }, left, right));
    showProblem(left.lastChild, state.cmp.open, A.kind);
    showProblem(right.lastChild, state.cmp.openB, B.kind);
  }
  return out;
}

window.addEventListener("DOMContentLoaded", () => {
  if (typeof DecompressionStream === "undefined") {
    document.getElementById("main").textContent = "This browser lacks DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+ have it).";
    return;
  }
  render();
  document.body.dataset.ready = "1";
});
