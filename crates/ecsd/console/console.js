// ecsd console: one small script for every page (no framework, no build
// step). It calls the public API with the session cookie and the session's
// CSRF token in X-CSRF-Token, so each action is authorized and audited as
// that API call. Text from the server is always set as textContent.
"use strict";

const meta = (name) => {
  const m = document.querySelector(`meta[name="${name}"]`);
  return m ? m.content : "";
};
const PROJECT = meta("ecsd-project");
const CSRF = meta("ecsd-csrf");
const PAGE = meta("ecsd-page");

// ---------------------------------------------------------------- DOM --

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function field(id, label, input) {
  input.id = id;
  return h("div", {}, h("label", { for: id, text: label }), input);
}

function toast(text) {
  const t = document.getElementById("toast");
  if (!t) return;
  t.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.textContent = ""), 6000);
}

function fmtTime(v) {
  if (v === null || v === undefined || v === "") return "";
  const d = typeof v === "number" ? new Date(v) : new Date(v);
  return isNaN(d) ? String(v) : d.toLocaleString();
}

// ---------------------------------------------------------------- API --

class ApiError extends Error {
  constructor(status, body, requestId) {
    const code = body?.error?.code || body?.error_code || `HTTP ${status}`;
    const message = body?.error?.message || body?.error_msg || "The request failed.";
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.apiMessage = message;
    this.body = body;
    this.requestId = requestId || body?.request_id || "";
  }
}

async function api(method, path, body) {
  const headers = { "X-CSRF-Token": CSRF, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  const requestId = r.headers.get("x-request-id") || "";
  if (r.status === 401) {
    // The session ended (idle, absolute expiry, sign-out elsewhere).
    window.location.assign("/console/login");
  }
  if (!r.ok) throw new ApiError(r.status, json, requestId);
  return { json, requestId };
}

const v1 = (p) => `/v1/${encodeURIComponent(PROJECT)}${p}`;

function errorBox(e) {
  const box = h("div", { class: "error", role: "alert" });
  if (e instanceof ApiError) {
    box.append(h("p", { text: `${e.code}: ${e.apiMessage}` }));
    const internal = e.body?.internalError;
    if (Array.isArray(internal) && internal.length) {
      const ul = h("ul", {});
      for (const i of internal.slice(0, 50)) {
        ul.append(h("li", { text: `${i.id}: ${i.error_code} ${i.error_message}` }));
      }
      box.append(ul);
    }
    if (e.requestId) box.append(h("p", { class: "muted", text: `Request id ${e.requestId}` }));
  } else {
    box.append(h("p", { text: String(e.message || e) }));
  }
  return box;
}

// Server-Sent Events over fetch (EventSource cannot send the CSRF header).
// Reconnects when a stream's life ends; stops at `event: end` or abort.
async function streamEvents(path, onEvent, signal) {
  for (;;) {
    try {
      const r = await fetch(path, {
        headers: { "X-CSRF-Token": CSRF, Accept: "text/event-stream" },
        credentials: "same-origin",
        cache: "no-store",
        signal,
      });
      if (!r.ok) {
        let body = null;
        try {
          body = await r.json();
        } catch (_) {}
        throw new ApiError(r.status, body, r.headers.get("x-request-id"));
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (event === "end") return;
          if (data) await onEvent(event, JSON.parse(data));
        }
      }
    } catch (e) {
      if (signal && signal.aborted) return;
      if (e instanceof ApiError) throw e;
    }
    await new Promise((res) => setTimeout(res, 2000));
    if (signal && signal.aborted) return;
  }
}

// The resets and jobs started from this browser (ids only).
function remember(kind, id, count) {
  const list = JSON.parse(localStorage.getItem("ecsd-history") || "[]");
  list.unshift({ kind, id, count, at: Date.now() });
  localStorage.setItem("ecsd-history", JSON.stringify(list.slice(0, 30)));
}

// ------------------------------------------------------------ Servers --

const STATUSES = ["", "ACTIVE", "SHUTOFF", "REBOOT", "HARD_REBOOT", "BUILD", "ERROR"];

function select(options, value) {
  const s = h("select", {});
  for (const [v, label] of options) s.append(h("option", { value: v, text: label }));
  s.value = value || "";
  return s;
}

function agentCell(s) {
  const a = s["x-ecsd"]?.agent;
  if (!a || !a.enrolled) return h("span", { class: "state state-no", text: "none" });
  const up = s.host_status === "UP";
  return h(
    "span",
    {},
    h("span", { class: `state state-${up ? "up" : "stale"}`, text: up ? "up" : "stale" }),
    a.version ? ` ${a.version}` : "",
  );
}

function osOf(s) {
  return (s.metadata && s.metadata.os_type) || "";
}

function serversPage(app) {
  const st = {
    filter: JSON.parse(sessionStorage.getItem("ecsd-filter") || "{}"),
    limit: 50,
    markers: [],
    marker: null,
    selected: new Map(),
    allMatching: false,
    count: 0,
    page: [],
  };
  const name = h("input", { type: "search", value: st.filter.name || "" });
  const status = select(STATUSES.map((s) => [s, s || "any"]), st.filter.status);
  const tag = h("input", { type: "text", value: st.filter.tags || "", placeholder: "key=value" });
  const os = select([["", "any"], ["Linux", "Linux"], ["Windows", "Windows"]], st.filter.os_type);
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter servers" },
    field("f-name", "Name contains", name),
    field("f-status", "Status", status),
    field("f-tag", "Tag", tag),
    field("f-os", "OS", os),
    h("div", {}, h("button", { type: "submit", class: "primary", text: "Apply filters" })),
  );
  const summary = h("p", { id: "servers-summary", "aria-live": "polite" });
  const selBar = h("div", { class: "row" });
  const tableWrap = h("div", { class: "table-wrap" });
  const prev = h("button", { type: "button", text: "Previous page" });
  const next = h("button", { type: "button", text: "Next page" });
  const pager = h("div", { class: "row" }, prev, next);
  const err = h("div", {});
  app.replaceChildren(form, err, summary, selBar, tableWrap, pager);

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    st.filter = {};
    if (name.value.trim()) st.filter.name = name.value.trim();
    if (status.value) st.filter.status = status.value;
    if (tag.value.trim()) st.filter.tags = tag.value.trim();
    if (os.value) st.filter.os_type = os.value;
    sessionStorage.setItem("ecsd-filter", JSON.stringify(st.filter));
    st.markers = [];
    st.marker = null;
    st.allMatching = false;
    st.selected.clear();
    load();
  });
  next.addEventListener("click", () => {
    st.markers.push(st.marker);
    st.marker = st.page.length ? st.page[st.page.length - 1].id : null;
    load();
  });
  prev.addEventListener("click", () => {
    st.marker = st.markers.pop() || null;
    load();
  });

  function query() {
    const q = new URLSearchParams(st.filter);
    q.set("limit", String(st.limit));
    if (st.marker) q.set("marker", st.marker);
    return q;
  }

  function renderSelection() {
    const n = st.allMatching ? st.count : st.selected.size;
    const go = h("button", {
      type: "button",
      class: "primary",
      id: "reset-selected",
      disabled: n === 0,
      text: `Reset password of ${n} server${n === 1 ? "" : "s"}…`,
    });
    go.addEventListener("click", () => {
      const sel = st.allMatching
        ? { filter: st.filter, count: st.count }
        : { servers: [...st.selected.values()] };
      sessionStorage.setItem("ecsd-selection", JSON.stringify(sel));
      window.location.assign("/console/reset");
    });
    const all = h("button", {
      type: "button",
      id: "select-all-matching",
      text: `Select all ${st.count} matching the filter`,
    });
    all.addEventListener("click", () => {
      st.allMatching = true;
      renderTable();
      renderSelection();
    });
    const clear = h("button", { type: "button", text: "Clear selection" });
    clear.addEventListener("click", () => {
      st.allMatching = false;
      st.selected.clear();
      renderTable();
      renderSelection();
    });
    selBar.replaceChildren(
      h("span", {
        id: "selection-count",
        "aria-live": "polite",
        text: st.allMatching
          ? `All ${st.count} servers matching the filter are selected.`
          : `${st.selected.size} selected.`,
      }),
      all,
      clear,
      go,
    );
  }

  function renderTable() {
    const headAll = h("input", { type: "checkbox", "aria-label": "Select every server on this page" });
    headAll.checked = st.allMatching || (st.page.length > 0 && st.page.every((s) => st.selected.has(s.id)));
    headAll.disabled = st.allMatching;
    headAll.addEventListener("change", () => {
      for (const s of st.page) {
        if (headAll.checked) st.selected.set(s.id, { id: s.id, name: s.name, os: osOf(s) });
        else st.selected.delete(s.id);
      }
      renderTable();
      renderSelection();
    });
    const rows = st.page.map((s) => {
      const box = h("input", { type: "checkbox", "aria-label": `Select ${s.name}` });
      box.checked = st.allMatching || st.selected.has(s.id);
      box.disabled = st.allMatching;
      box.addEventListener("change", () => {
        if (box.checked) st.selected.set(s.id, { id: s.id, name: s.name, os: osOf(s) });
        else st.selected.delete(s.id);
        renderSelection();
      });
      const last = s["x-ecsd"]?.last_reset;
      return h(
        "tr",
        { "data-id": s.id },
        h("td", {}, box),
        h("td", {}, h("span", { text: s.name }), h("br"), h("code", { class: "muted", text: s.id })),
        h("td", { text: s.status }),
        h("td", { text: osOf(s) }),
        h("td", {}, agentCell(s)),
        h("td", {}, (s.tags || []).map((t) => h("span", { class: "tag", text: t }))),
        h(
          "td",
          {},
          last
            ? h("a", { href: `/console/watch#reset=${last.request_id}`, class: `state state-${last.state}`, text: last.state })
            : h("span", { class: "muted", text: "—" }),
        ),
      );
    });
    const table = h(
      "table",
      { id: "servers" },
      h("caption", { class: "skip", text: "Servers of the project" }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, headAll),
          ["Name", "Status", "OS", "Agent", "Tags", "Last reset"].map((c) => h("th", { scope: "col", text: c })),
        ),
      ),
      h("tbody", {}, rows),
    );
    tableWrap.replaceChildren(table);
  }

  async function load() {
    err.replaceChildren();
    try {
      const { json } = await api("GET", v1(`/cloudservers/detail?${query()}`));
      st.page = json.servers || [];
      st.count = json.count || 0;
      const from = st.markers.length * st.limit + 1;
      summary.textContent = st.count
        ? `${st.count} servers match; showing ${from}–${from + st.page.length - 1}.`
        : "No server matches the filter.";
      prev.disabled = st.markers.length === 0;
      next.disabled = from + st.page.length - 1 >= st.count;
      renderTable();
      renderSelection();
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  }
  load();
}

// -------------------------------------------------------------- Reset --

async function resolveSelection(sel) {
  if (sel.servers) return sel.servers;
  // "All matching the filter": every page, by marker (one reset takes 1000).
  if (sel.count > 1000) {
    throw new Error(`${sel.count} servers match: one reset takes at most 1000; narrow the filter.`);
  }
  const out = [];
  let marker = null;
  for (;;) {
    const q = new URLSearchParams(sel.filter);
    q.set("limit", "1000");
    if (marker) q.set("marker", marker);
    const { json } = await api("GET", v1(`/cloudservers/detail?${q}`));
    const page = json.servers || [];
    for (const s of page) out.push({ id: s.id, name: s.name, os: osOf(s) });
    if (page.length < 1000 || out.length >= 1000) break;
    marker = page[page.length - 1].id;
  }
  return out;
}

function resetPage(app) {
  const sel = JSON.parse(sessionStorage.getItem("ecsd-selection") || "null");
  if (!sel) {
    app.replaceChildren(
      h("p", {}, "No servers are selected. Choose them on the ", h("a", { href: "/console/servers", text: "Servers" }), " page."),
    );
    return;
  }
  app.replaceChildren(h("p", { class: "muted", text: "Resolving the selection…" }));
  resolveSelection(sel).then(
    (servers) => resetForm(app, servers),
    (e) => app.replaceChildren(errorBox(e)),
  );
}

function resetForm(app, servers) {
  const names = new Map(servers.map((s) => [s.id, s.name]));
  const ids = servers.map((s) => ({ id: s.id }));
  const list = h(
    "details",
    {},
    h("summary", { text: `${servers.length} server${servers.length === 1 ? "" : "s"} selected` }),
    h("ul", { class: "plain" }, servers.slice(0, 200).map((s) => h("li", { text: `${s.name} (${s.os || "?"})` }))),
  );
  const pw1 = h("input", { type: "password", autocomplete: "off", spellcheck: "false", "aria-describedby": "pw-msg", maxlength: 64 });
  const pw2 = h("input", { type: "password", autocomplete: "off", spellcheck: "false", "aria-describedby": "pw-msg", maxlength: 64 });
  const msg = h("p", { id: "pw-msg", "aria-live": "polite", class: "muted", text: "Type the new password twice; it is checked with the server's rules as you type." });
  const restart = h("input", { type: "checkbox", id: "opt-restart" });
  const now = h("input", { type: "checkbox", id: "opt-now" });
  const dry = h("button", { type: "button", id: "dry-run", text: "Dry run" });
  const go = h("button", { type: "button", class: "danger", id: "do-reset", disabled: true, text: "Reset password" });
  const out = h("div", { id: "reset-result" });
  const form = h(
    "form",
    { autocomplete: "off", "aria-label": "Password reset" },
    h(
      "fieldset",
      {},
      h("legend", { text: "New password" }),
      h(
        "div",
        { class: "fields" },
        h("label", { for: "pw1", text: "New password" }),
        pw1,
        h("label", { for: "pw2", text: "Type it again" }),
        pw2,
      ),
      msg,
    ),
    h(
      "fieldset",
      {},
      h("legend", { text: "When it applies" }),
      h("label", { class: "check", for: "opt-restart" }, restart, "Restart the servers (reboot) so that the new password applies now"),
      h("br"),
      h("label", { class: "check", for: "opt-now" }, now, "Apply now on running servers, without a restart"),
    ),
    h("div", { class: "row" }, dry, go),
  );
  pw1.id = "pw1";
  pw2.id = "pw2";
  app.replaceChildren(list, form, out);
  form.addEventListener("submit", (ev) => ev.preventDefault());

  let seq = 0;
  let good = false;
  let timer = null;
  async function check() {
    const mine = ++seq;
    good = false;
    go.disabled = true;
    const a = pw1.value;
    const b = pw2.value;
    if (!a) {
      msg.className = "muted";
      msg.textContent = "Type the new password twice.";
      return;
    }
    try {
      await api("PUT", v1("/cloudservers/os-reset-passwords"), { dry_run: true, new_password: a, servers: ids });
      if (mine !== seq) return;
      if (b !== a) {
        msg.className = "error";
        msg.textContent = b ? "The two passwords differ." : "The password meets the rules; type it again to confirm.";
        return;
      }
      msg.className = "ok";
      msg.textContent = "The password meets the rules for every selected server.";
      good = true;
      go.disabled = false;
    } catch (e) {
      if (mine !== seq) return;
      msg.className = "error";
      msg.textContent = e instanceof ApiError && e.code === "Ecs.0011" ? e.apiMessage : `${e.message}`;
    }
  }
  const later = () => {
    clearTimeout(timer);
    good = false;
    go.disabled = true;
    timer = setTimeout(check, 400);
  };
  pw1.addEventListener("input", later);
  pw2.addEventListener("input", later);

  dry.addEventListener("click", async () => {
    out.replaceChildren(h("p", { class: "muted", text: "Checking…" }));
    const body = { dry_run: true, servers: ids };
    if (pw1.value) body.new_password = pw1.value;
    try {
      const { json } = await api("PUT", v1("/cloudservers/os-reset-passwords"), body);
      const rows = (json.readiness || []).map((r) => {
        const ready = r.plugin_installed && ["ACTIVE", "SHUTOFF", "REBOOT", "HARD_REBOOT"].includes(r.status);
        return h(
          "tr",
          {},
          h("td", { text: names.get(r.id) || r.id }),
          h("td", { class: `state state-${ready ? "ready" : "no"}`, text: ready ? "ready" : "not ready" }),
          h("td", { text: r.plugin_installed ? "yes" : "no" }),
          h("td", { text: r.agent_version || "" }),
          h("td", { text: fmtTime(r.agent_last_seen) }),
          h("td", { text: r.status }),
        );
      });
      out.replaceChildren(
        h("h2", { text: "Dry run: readiness" }),
        h("p", { class: "ok", role: "status", id: "dry-run-ok", text: `Nothing was changed. All ${rows.length} servers would accept the reset.` }),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { id: "readiness" },
            h("thead", {}, h("tr", {}, ["Server", "Ready", "Agent enrolled", "Agent version", "Agent last seen", "State"].map((c) => h("th", { scope: "col", text: c })))),
            h("tbody", {}, rows),
          ),
        ),
      );
    } catch (e) {
      out.replaceChildren(h("h2", { text: "Dry run" }), errorBox(e));
    }
  });

  go.addEventListener("click", async () => {
    if (!good || pw1.value !== pw2.value) return;
    go.disabled = true;
    const body = { new_password: pw1.value, servers: ids };
    if (now.checked) body.apply = "now";
    try {
      const { requestId } = await api("PUT", v1("/cloudservers/os-reset-passwords"), body);
      // The password is no longer needed here.
      pw1.value = "";
      pw2.value = "";
      body.new_password = "";
      remember("reset", requestId, ids.length);
      let hash = `#reset=${requestId}`;
      if (restart.checked) {
        const { json } = await api("POST", v1("/cloudservers/action"), { reboot: { type: "SOFT", servers: ids } });
        remember("job", json.job_id, ids.length);
        hash += `&job=${json.job_id}`;
      }
      sessionStorage.removeItem("ecsd-selection");
      window.location.assign(`/console/watch${hash}`);
    } catch (e) {
      out.replaceChildren(h("h2", { text: "Reset refused" }), errorBox(e));
      go.disabled = false;
    }
  });
}

// -------------------------------------------------------------- Watch --

const RESET_STATES = ["PENDING", "DELIVERED", "APPLIED", "FAILED", "SUPERSEDED"];

function watchPage(app) {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const reset = params.get("reset");
  const job = params.get("job");
  const ctl = new AbortController();
  window.addEventListener("hashchange", () => window.location.reload());
  const parts = [];
  if (reset) parts.push(watchReset(reset, ctl.signal));
  if (job) parts.push(watchJob(job, ctl.signal));
  parts.push(history());
  app.replaceChildren(...parts);
}

// Server names by id, for the watch tables (the streams carry ids only).
const serverNames = new Map();
async function loadNames(ids) {
  const missing = ids.filter((id) => !serverNames.has(id)).slice(0, 100);
  if (!missing.length) return;
  try {
    const { json } = await api("GET", v1(`/cloudservers/detail?server_id=${missing.join(",")}&limit=100`));
    for (const s of json.servers || []) serverNames.set(s.id, s.name);
  } catch (_) {
    // Names are a convenience: the ids stay.
  }
}

function counts(items, states) {
  const c = Object.fromEntries(states.map((s) => [s, 0]));
  for (const i of items) c[i] = (c[i] || 0) + 1;
  return c;
}

function watchReset(requestId, signal) {
  const names = serverNames;
  const status = h("p", { id: "reset-status", role: "status", "aria-live": "polite", text: "Connecting…" });
  const bar = h("progress", { id: "reset-progress", max: 1, value: 0, "aria-label": "Servers finished" });
  const countBox = h("div", { class: "counts", id: "reset-counts" });
  const body = h("tbody", {});
  const err = h("div", {});
  const section = h(
    "section",
    { "aria-labelledby": "reset-h" },
    h("h2", { id: "reset-h" }, "Password reset ", h("code", { text: requestId })),
    status,
    bar,
    countBox,
    err,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "reset-servers" },
        h("thead", {}, h("tr", {}, ["Server", "State", "Reason", "Updated"].map((c) => h("th", { scope: "col", text: c })))),
        body,
      ),
    ),
  );
  function render(o) {
    const servers = o.servers || [];
    const done = servers.filter((s) => !["PENDING", "DELIVERED"].includes(s.state)).length;
    bar.max = Math.max(servers.length, 1);
    bar.value = done;
    const c = counts(servers.map((s) => s.state), RESET_STATES);
    countBox.replaceChildren(...RESET_STATES.map((s) => h("span", {}, h("span", { class: `state state-${s}`, text: s }), `: ${c[s] || 0}`)));
    status.textContent = o.complete
      ? `Complete: ${c.APPLIED || 0} applied, ${c.FAILED || 0} failed of ${servers.length}.`
      : `${done} of ${servers.length} servers finished; waiting for the others…`;
    body.replaceChildren(
      ...servers.map((s) =>
        h(
          "tr",
          { "data-id": s.id },
          h("td", {}, h("span", { text: names.get(s.id) || "" }), " ", h("code", { class: "muted", text: s.id })),
          h("td", { class: `state state-${s.state}`, text: s.state }),
          h("td", { text: s.reason || "" }),
          h("td", { text: fmtTime(s.updated) }),
        ),
      ),
    );
  }
  (async () => {
    let named = false;
    try {
      await streamEvents(
        v1(`/cloudservers/os-reset-passwords/${encodeURIComponent(requestId)}/events`),
        async (event, o) => {
          if (event !== "outcome") return;
          if (!named) {
            named = true;
            await loadNames((o.servers || []).map((s) => s.id));
          }
          render(o);
        },
        signal,
      );
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  })();
  return section;
}

function watchJob(jobId, signal) {
  const status = h("p", { id: "job-status", role: "status", "aria-live": "polite", text: "Connecting…" });
  const bar = h("progress", { id: "job-progress", max: 1, value: 0, "aria-label": "Restarts finished" });
  const body = h("tbody", {});
  const err = h("div", {});
  const section = h(
    "section",
    { "aria-labelledby": "job-h" },
    h("h2", { id: "job-h" }, "Restart job ", h("code", { text: jobId })),
    status,
    bar,
    err,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "job-servers" },
        h("thead", {}, h("tr", {}, ["Server", "Status", "Reason"].map((c) => h("th", { scope: "col", text: c })))),
        body,
      ),
    ),
  );
  let named = false;
  (async () => {
    try {
      await streamEvents(
        v1(`/jobs/${encodeURIComponent(jobId)}/events`),
        async (event, j) => {
          if (event !== "job") return;
          const subs = j.entities?.sub_jobs || [];
          if (!named) {
            named = true;
            await loadNames(subs.map((s) => s.entities?.server_id || ""));
          }
          const done = subs.filter((s) => s.status === "SUCCESS" || s.status === "FAIL").length;
          bar.max = Math.max(subs.length, 1);
          bar.value = done;
          status.textContent = `Job ${j.status}: ${done} of ${subs.length} restarts finished.`;
          body.replaceChildren(
            ...subs.map((s) =>
              h(
                "tr",
                {},
                h(
                  "td",
                  {},
                  h("span", { text: serverNames.get(s.entities?.server_id) || "" }),
                  " ",
                  h("code", { class: "muted", text: s.entities?.server_id || "" }),
                ),
                h("td", { class: `state state-${s.status}`, text: s.status }),
                h("td", { text: s.fail_reason || "" }),
              ),
            ),
          );
        },
        signal,
      );
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  })();
  return section;
}

function history() {
  const mine = JSON.parse(localStorage.getItem("ecsd-history") || "[]");
  const recent = h("ul", { class: "plain", id: "history-local" });
  for (const x of mine) {
    const href = x.kind === "job" ? `#job=${x.id}` : `#reset=${x.id}`;
    recent.append(h("li", {}, h("a", { href, text: `${x.kind === "job" ? "Restart job" : "Reset"} ${x.id}` }), ` · ${x.count} servers · ${fmtTime(x.at)}`));
  }
  if (!mine.length) recent.append(h("li", { class: "muted", text: "None from this browser yet." }));
  const past = h("ul", { class: "plain", id: "history-resets" }, h("li", { class: "muted", text: "Loading…" }));
  (async () => {
    try {
      const q = new URLSearchParams({ trace_name: "batch-reset-password", trace_status: "success", limit: "20" });
      const { json } = await api("GET", `/v3/${encodeURIComponent(PROJECT)}/traces?${q}`);
      const items = (json.traces || []).filter((t) => !t.dry_run);
      past.replaceChildren(
        ...(items.length
          ? items.map((t) =>
              h(
                "li",
                {},
                h("a", { href: `#reset=${t.request_id}`, text: `Reset ${t.request_id}` }),
                ` · ${(t.resource_ids || []).length} servers · by ${t.user?.name || ""} · ${fmtTime(t.time)}`,
              ),
            )
          : [h("li", { class: "muted", text: "No reset yet." })]),
      );
    } catch (e) {
      past.replaceChildren(h("li", {}, errorBox(e)));
    }
  })();
  // Jobs: the accepted power actions' traces say "accepted job <id>".
  const jobs = h("ul", { class: "plain", id: "history-jobs" }, h("li", { class: "muted", text: "Loading…" }));
  (async () => {
    try {
      const names = ["reboot-servers", "start-servers", "stop-servers"];
      const pages = await Promise.all(
        names.map((n) =>
          api("GET", `/v3/${encodeURIComponent(PROJECT)}/traces?${new URLSearchParams({ trace_name: n, trace_status: "success", limit: "10" })}`),
        ),
      );
      const items = pages
        .flatMap((p) => p.json.traces || [])
        .map((t) => ({ t, id: (/accepted job ([0-9a-f-]{36})/.exec(t.message) || [])[1] }))
        .filter((x) => x.id)
        .sort((a, b) => b.t.time - a.t.time)
        .slice(0, 20);
      jobs.replaceChildren(
        ...(items.length
          ? items.map(({ t, id }) =>
              h(
                "li",
                {},
                h("a", { href: `#job=${id}`, text: `${t.trace_name} job ${id}` }),
                ` · ${(t.resource_ids || []).length} servers · by ${t.user?.name || ""} · ${fmtTime(t.time)}`,
              ),
            )
          : [h("li", { class: "muted", text: "No job yet." })]),
      );
    } catch (e) {
      jobs.replaceChildren(h("li", {}, errorBox(e)));
    }
  })();
  return h(
    "section",
    { "aria-labelledby": "hist-h" },
    h("h2", { id: "hist-h", text: "Past resets and jobs" }),
    h("h3", { text: "Resets in this project" }),
    past,
    h("h3", { text: "Restart, start and stop jobs in this project" }),
    jobs,
    h("h3", { text: "Started from this browser" }),
    recent,
  );
}

// -------------------------------------------------------------- Audit --

function auditPage(app) {
  const user = h("input", { type: "text" });
  const action = select(
    [
      ["", "any"],
      ["batch-reset-password", "batch-reset-password"],
      ["reset-password", "reset-password"],
      ["reboot-servers", "reboot-servers"],
      ["start-servers", "start-servers"],
      ["stop-servers", "stop-servers"],
      ["ecs:cloudServers:resetServerPwd", "reset refused by policy"],
      ["console-sign-in", "console-sign-in"],
      ["console-sign-out", "console-sign-out"],
      ["create-token", "create-token"],
    ],
    "",
  );
  const server = h("input", { type: "text" });
  const outcome = select([["", "any"], ["success", "success"], ["fail", "failed or denied"]], "");
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter traces" },
    field("a-user", "User", user),
    field("a-action", "Action", action),
    field("a-server", "Server id", server),
    field("a-outcome", "Outcome", outcome),
    h("div", {}, h("button", { type: "submit", class: "primary", text: "Apply filters" })),
  );
  const err = h("div", {});
  const tableWrap = h("div", { class: "table-wrap" });
  const more = h("button", { type: "button", text: "Older traces" });
  const newest = h("button", { type: "button", text: "Newest" });
  app.replaceChildren(form, err, tableWrap, h("div", { class: "row" }, newest, more));
  let next = null;
  async function load(marker) {
    err.replaceChildren();
    const q = new URLSearchParams({ limit: "50" });
    if (user.value.trim()) q.set("user", user.value.trim());
    if (action.value) q.set("trace_name", action.value);
    if (server.value.trim()) q.set("resource_id", server.value.trim());
    if (outcome.value) q.set("trace_status", outcome.value);
    if (marker) q.set("next", marker);
    try {
      const { json } = await api("GET", `/v3/${encodeURIComponent(PROJECT)}/traces?${q}`);
      next = json.meta_data?.marker || null;
      more.disabled = !next;
      const rows = (json.traces || []).map((t) =>
        h(
          "tr",
          {},
          h("td", { text: fmtTime(t.time) }),
          h("td", { text: t.user?.user_name || t.user?.name || "" }),
          h("td", {}, h("strong", { text: t.trace_name }), t.dry_run ? h("span", { class: "muted", text: " (dry run)" }) : ""),
          h("td", { text: (t.resource_ids || []).length ? `${t.resource_ids.length}` : "" }),
          h("td", { class: `state state-${t.trace_rating === "normal" ? "up" : "no"}`, text: t.message }),
          h("td", { text: t.source_ip }),
          h("td", {}, h("code", { text: t.request_id })),
        ),
      );
      tableWrap.replaceChildren(
        h(
          "table",
          { id: "traces" },
          h("thead", {}, h("tr", {}, ["Time", "User", "Action", "Servers", "Outcome", "Source", "Request id"].map((c) => h("th", { scope: "col", text: c })))),
          h("tbody", {}, rows.length ? rows : [h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No trace matches." }))]),
        ),
      );
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    load(null);
  });
  more.addEventListener("click", () => load(next));
  newest.addEventListener("click", () => load(null));
  load(null);
}

// --------------------------------------------------------------- main --

document.addEventListener("DOMContentLoaded", () => {
  const app = document.getElementById("app");
  if (!app) return;
  const pages = { servers: serversPage, reset: resetPage, watch: watchPage, audit: auditPage };
  const page = pages[PAGE];
  if (page) page(app);
});
