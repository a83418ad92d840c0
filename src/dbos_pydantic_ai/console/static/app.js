// The console page: plain JS, no build step, no external resources.
//
// Safety rule for this file: every string that came from the API (model output, tool arguments and results,
// workflow ids, error messages, agent names) reaches the DOM only as a text node (`h()` children, textContent)
// or as an attribute value set with setAttribute on a non-executing attribute. innerHTML is never used.
"use strict";

(() => {
  const TOKEN = new URLSearchParams(window.location.search).get("token");
  const PAGE_SIZE = 50;
  const REFRESH_MS = 5000;
  const RUNNING = new Set(["PENDING", "ENQUEUED", "DELAYED"]);
  const STATUSES = ["PENDING", "ENQUEUED", "DELAYED", "SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"];

  const app = document.getElementById("app");
  const statusLine = document.getElementById("status-line");

  // Cleanup callbacks of the current view (timers, EventSources): run on every navigation.
  let cleanups = [];
  // Bumped on every navigation so that late responses of a previous view are dropped.
  let generation = 0;

  // --- DOM helpers ---------------------------------------------------------------------------------------

  /** An element; string/number children become text nodes, never markup. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "href") el.setAttribute("href", safeHref(value));
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** Only in-page hash links are ever generated. */
  function safeHref(value) {
    const s = String(value);
    return s.startsWith("#") ? s : "#";
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function runHref(id) {
    return "#/run/" + encodeURIComponent(id);
  }

  function runLink(id, label) {
    return h("a", { href: runHref(id), class: "mono" }, label === undefined ? id : label);
  }

  // --- Formatting ----------------------------------------------------------------------------------------

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const m = Math.floor(ms / 60000);
    const s = Math.round((ms % 60000) / 1000);
    if (m < 60) return `${m} min ${s} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
  }

  function fmtCost(usd) {
    if (usd === null || usd === undefined) return "unknown";
    const n = Number(usd);
    if (n === 0) return "$0";
    if (n < 0.01) return "$" + n.toPrecision(2);
    return "$" + n.toFixed(n < 1 ? 4 : 2);
  }

  function fmtArgs(args) {
    if (args === null || args === undefined) return "";
    if (typeof args === "string") {
      try {
        return JSON.stringify(JSON.parse(args), null, 2);
      } catch {
        return args;
      }
    }
    return JSON.stringify(args, null, 2);
  }

  function statusBadge(status) {
    const s = String(status || "UNKNOWN");
    return h("span", { class: "badge status-" + s.toLowerCase().replace(/[^a-z_]/g, "") }, s);
  }

  /** "recovered once, gap 4.20 s (step 2 → step 3), last run by worker w-1": what the recovery of a run cost. */
  function recoveryText(run) {
    const r = run.recovery;
    let text = `recovered ${r.times === 1 ? "once" : r.times + " times"}`;
    if (r.gap_ms !== null && r.gap_ms !== undefined) text += `, gap ${fmtDuration(r.gap_ms)} (step ${r.last_step_before} → step ${r.first_step_after})`;
    if (run.executor_id) text += `, last run by worker ${run.executor_id}`;
    return text;
  }

  /** What a run's model retries are doing: waiting for the next try, or gave up. */
  function retryText(retry, status) {
    if (retry.waiting) {
      return `waiting to retry: attempt ${retry.attempt} failed, next try ${fmtTime(retry.next_try_at)}`;
    }
    const times = retry.failed_attempts === 1 ? "1 failed attempt" : `${retry.failed_attempts} failed attempts`;
    if (status === "SUCCESS") return `succeeded after ${times} of a model request`;
    if (retry.state === "gave_up" && !RUNNING.has(status)) return `gave up after ${retry.attempt} failed attempts`;
    return `a model request failed: ${times}, the last at ${fmtTime(retry.failed_at)}`;
  }

  /** "taken over from worker w-1 by w-2 at 2025-01-01 10:00:00": one takeover of a run (fleet failover). */
  function takeoverText(t) {
    return `taken over from worker ${t.from_executor_id} by ${t.by_executor_id} at ${fmtTime(t.taken_at)}`;
  }

  /** "4.2 s ago": a heartbeat's age, measured by the database's clock. */
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    return fmtDuration(Math.max(0, Number(seconds)) * 1000) + " ago";
  }

  // --- API -----------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
    const init = { method: options.method || "GET", headers, credentials: "same-origin" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      let detail = data && data.detail !== undefined ? data.detail : response.statusText;
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      throw new ApiError(response.status, `${response.status}: ${detail}`);
    }
    return data;
  }

  /**
   * GET `path` for the view of navigation `gen`: its data, or null when the request failed (the error is shown in
   * `message`) or the user has moved to another view meanwhile (a late response is dropped).
   */
  async function loadForView(gen, message, path) {
    let data;
    try {
      data = await api(path);
    } catch (error) {
      if (gen !== generation) return null;
      clear(message);
      message.appendChild(errorBox(error));
      return null;
    }
    if (gen !== generation) return null;
    clear(message);
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  }

  function flash(message, isError) {
    statusLine.textContent = message;
    statusLine.className = "status-line" + (isError ? " error" : "");
    if (!isError) setTimeout(() => {
      if (statusLine.textContent === message) statusLine.textContent = "";
    }, 4000);
  }

  function errorBox(error) {
    return h("div", { class: "error-box", role: "alert" }, error && error.message ? error.message : String(error));
  }

  function every(ms, fn) {
    const id = setInterval(fn, ms);
    cleanups.push(() => clearInterval(id));
  }

  // --- Router --------------------------------------------------------------------------------------------

  function parseHash() {
    const raw = window.location.hash.replace(/^#\/?/, "");
    const [pathPart, queryPart] = raw.split("?");
    const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, params: new URLSearchParams(queryPart || "") };
  }

  function route() {
    for (const fn of cleanups) fn();
    cleanups = [];
    generation += 1;
    const { parts, params } = parseHash();
    const view = parts[0] || "runs";
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.getAttribute("data-nav") === view);
    }
    clear(app);
    if (view === "run" && parts[1]) renderRun(parts[1]);
    else if (view === "approvals") renderApprovals();
    else if (view === "workers") renderWorkers();
    else if (view === "compare" && parts[1] && parts[2]) renderCompare(parts[1], parts[2]);
    else renderRuns(params);
  }

  window.addEventListener("hashchange", route);

  // --- Pending approvals count in the header -------------------------------------------------------------

  async function refreshApprovalCount() {
    const badge = document.getElementById("approval-count");
    try {
      const data = await api("/api/approvals");
      const n = data.approvals.length;
      badge.textContent = String(n);
      badge.hidden = n === 0;
    } catch {
      badge.hidden = true;
    }
  }

  // --- Runs table ----------------------------------------------------------------------------------------

  function renderRuns(params) {
    const gen = generation;
    const state = {
      agent: params.get("agent") || "",
      status: params.get("status") || "",
      q: params.get("q") || "",
      limit: Math.min(Math.max(parseInt(params.get("limit") || "", 10) || PAGE_SIZE, 1), 500),
      cursors: [null], // cursor of each page visited; the last is the current page
    };

    const agentSelect = h("select", { id: "filter-agent", "aria-label": "Agent" }, h("option", { value: "" }, "All agents"));
    const statusSelect = h(
      "select",
      { id: "filter-status", "aria-label": "Status" },
      h("option", { value: "" }, "All statuses"),
      STATUSES.map((s) => h("option", { value: s }, s)),
    );
    statusSelect.value = state.status;
    const search = h("input", {
      id: "filter-q",
      type: "search",
      placeholder: "Workflow id or agent",
      "aria-label": "Search",
      value: state.q,
    });
    const autoRefresh = h("input", { type: "checkbox", id: "auto-refresh", checked: true });
    const tbody = h("tbody");
    const prevButton = h("button", { type: "button", id: "page-prev" }, "← Newer");
    const nextButton = h("button", { type: "button", id: "page-next" }, "Older →");
    const pageInfo = h("span", { class: "muted" });
    const message = h("div");

    append(app, [
      h(
        "section",
        { class: "toolbar" },
        h("h1", {}, "Runs"),
        agentSelect,
        statusSelect,
        search,
        h("label", { class: "inline" }, autoRefresh, " auto-refresh"),
      ),
      message,
      h(
        "table",
        { class: "runs", id: "runs-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Agent", "Workflow id", "Status", "Started", "Duration", "Requests", "Tokens in", "Tokens out", "Cost"].map(
              (c, i) => h("th", { class: i >= 4 ? "num" : "" }, c),
            ),
          ),
        ),
        tbody,
      ),
      h("div", { class: "pager" }, prevButton, pageInfo, nextButton),
    ]);

    let nextCursor = null;

    function syncHash() {
      const q = query({ agent: state.agent, status: state.status, q: state.q, limit: state.limit === PAGE_SIZE ? "" : state.limit });
      const target = "#/runs" + q;
      if (window.location.hash !== target) history.replaceState(null, "", target);
    }

    async function load() {
      const cursor = state.cursors[state.cursors.length - 1];
      const path =
        "/api/runs" + query({ agent: state.agent, status: state.status, q: state.q, limit: state.limit, cursor });
      const data = await loadForView(gen, message, path);
      if (data === null) return;
      nextCursor = data.next_cursor;
      clear(tbody);
      if (data.runs.length === 0) {
        tbody.appendChild(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No runs match.")));
      }
      for (const run of data.runs) {
        tbody.appendChild(
          h(
            "tr",
            { class: "run-row", "data-workflow-id": run.workflow_id },
            h("td", {}, run.agent),
            h(
              "td",
              {},
              runLink(run.workflow_id),
              run.forked_from ? h("span", { class: "tag", title: "forked from " + run.forked_from }, "fork") : null,
              run.parent_workflow_id ? h("span", { class: "tag", title: "child of " + run.parent_workflow_id }, "child") : null,
              run.recovery ? h("span", { class: "tag recovered", title: recoveryText(run) }, "recovered") : null,
              run.takeovers && run.takeovers.length
                ? h("span", { class: "tag taken-over", title: run.takeovers.map(takeoverText).join("\n") }, "taken over")
                : null,
            ),
            h(
              "td",
              {},
              statusBadge(run.status),
              run.retry && run.retry.waiting ? h("div", { class: "retry-note", title: run.retry.last_error }, retryText(run.retry, run.status)) : null,
              run.error ? h("div", { class: "err-snippet" }, run.error) : null,
            ),
            h("td", { class: "nowrap" }, fmtTime(run.started_at)),
            h("td", { class: "num" }, run.duration_ms === null ? (RUNNING.has(run.status) ? "running" : "—") : fmtDuration(run.duration_ms)),
            h("td", { class: "num" }, fmtInt(run.model_requests)),
            h("td", { class: "num" }, fmtInt(run.input_tokens)),
            h("td", { class: "num" }, fmtInt(run.output_tokens)),
            h("td", { class: "num cost" }, fmtCost(run.cost_usd)),
          ),
        );
      }
      prevButton.disabled = state.cursors.length <= 1;
      nextButton.disabled = !nextCursor;
      pageInfo.textContent = `page ${state.cursors.length}`;
    }

    function reset() {
      state.cursors = [null];
      syncHash();
      load();
    }

    agentSelect.addEventListener("change", () => {
      state.agent = agentSelect.value;
      reset();
    });
    statusSelect.addEventListener("change", () => {
      state.status = statusSelect.value;
      reset();
    });
    let debounce = null;
    search.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        state.q = search.value.trim();
        reset();
      }, 250);
    });
    cleanups.push(() => clearTimeout(debounce));
    prevButton.addEventListener("click", () => {
      if (state.cursors.length > 1) state.cursors.pop();
      load();
    });
    nextButton.addEventListener("click", () => {
      if (!nextCursor) return;
      state.cursors.push(nextCursor);
      load();
    });

    api("/api/agents")
      .then((data) => {
        if (gen !== generation) return;
        for (const name of data.agents) agentSelect.appendChild(h("option", { value: name }, name));
        agentSelect.value = state.agent;
      })
      .catch(() => {});

    load();
    refreshApprovalCount();
    every(REFRESH_MS, () => {
      if (autoRefresh.checked && document.visibilityState === "visible") {
        load();
        refreshApprovalCount();
      }
    });
  }

  // --- Conversation ----------------------------------------------------------------------------------------

  const ITEM_LABELS = {
    user: "User",
    model_text: "Model",
    thinking: "Thinking",
    tool_call: "Tool call",
    tool_result: "Tool result",
    retry: "Retry",
    output: "Final output",
  };

  function conversationView(items) {
    const list = h("ol", { class: "conversation" });
    if (!items || items.length === 0) list.appendChild(h("li", { class: "empty" }, "No messages recorded yet."));
    for (const item of items || []) {
      const kind = ITEM_LABELS[item.kind] ? item.kind : "other";
      const head = h("div", { class: "item-head" }, h("span", { class: "item-kind" }, ITEM_LABELS[kind] || String(item.kind)));
      if (item.tool_name) head.appendChild(h("span", { class: "tool-name mono" }, item.tool_name));
      if (item.tool_call_id) head.appendChild(h("span", { class: "muted mono small" }, item.tool_call_id));
      if (item.function_id !== null && item.function_id !== undefined) {
        head.appendChild(h("span", { class: "muted small" }, "step " + item.function_id));
      }
      const body = [];
      if (item.args !== null && item.args !== undefined) body.push(h("pre", { class: "args" }, fmtArgs(item.args)));
      if (item.text !== null && item.text !== undefined && item.text !== "") body.push(h("div", { class: "text" }, item.text));
      list.appendChild(h("li", { class: "item item-" + kind }, head, body));
    }
    return list;
  }

  // --- Step timeline -------------------------------------------------------------------------------------

  function timelineView(steps, runStarted, recovery) {
    if (!steps || steps.length === 0) return h("p", { class: "muted" }, "No steps recorded yet.");
    const starts = steps.map((s) => (s.started_at ? Date.parse(s.started_at) : NaN)).filter((t) => !Number.isNaN(t));
    const ends = steps
      .map((s) => (s.completed_at ? Date.parse(s.completed_at) : s.started_at ? Date.parse(s.started_at) + (s.duration_ms || 0) : NaN))
      .filter((t) => !Number.isNaN(t));
    const t0 = Math.min(runStarted ? Date.parse(runStarted) : Infinity, ...starts);
    const t1 = Math.max(t0 + 1, ...ends);
    const span = t1 - t0;
    const table = h(
      "table",
      { class: "timeline", id: "timeline" },
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Step"), h("th", {}, "Kind"), h("th", { class: "num" }, "Duration"), h("th", { class: "bar-col" }, ""))),
    );
    const tbody = h("tbody");
    for (const step of steps) {
      const bar = h("div", { class: "bar kind-" + String(step.kind).replace(/[^a-z]/g, "") });
      const start = step.started_at ? Date.parse(step.started_at) : NaN;
      if (!Number.isNaN(start) && Number.isFinite(t0)) {
        const left = ((start - t0) / span) * 100;
        const width = Math.max(((step.duration_ms || 0) / span) * 100, 0.4);
        bar.style.left = Math.min(left, 99.6) + "%";
        bar.style.width = Math.min(width, 100 - Math.min(left, 99.6)) + "%";
      } else {
        bar.classList.add("unknown");
      }
      if (recovery && recovery.first_step_after === step.function_id) {
        const gap = recovery.gap_ms === null || recovery.gap_ms === undefined ? "" : `, ${fmtDuration(recovery.gap_ms)} after step ${recovery.last_step_before}`;
        tbody.appendChild(h("tr", { class: "recovery-marker" }, h("td", { colspan: 5 }, `↻ recovered by a worker at ${fmtTime(recovery.recovered_at)}${gap}`)));
      }
      tbody.appendChild(
        h(
          "tr",
          { class: step.failed_attempt ? "step-retry" : step.error ? "step-error" : "" },
          h("td", { class: "muted" }, step.function_id),
          h(
            "td",
            {},
            h("span", { class: "mono" }, step.name),
            step.child_workflow_id ? [" → ", runLink(step.child_workflow_id)] : null,
            step.error ? h("div", { class: "err-snippet" }, step.error) : null,
          ),
          h("td", {}, h("span", { class: "tag kind-" + String(step.kind).replace(/[^a-z]/g, "") }, step.kind)),
          h("td", { class: "num" }, fmtDuration(step.duration_ms)),
          h("td", { class: "bar-col" }, h("div", { class: "track" }, bar)),
        ),
      );
    }
    table.appendChild(tbody);
    return table;
  }

  // --- Model requests: tokens and cost -------------------------------------------------------------------

  function costView(run) {
    const requests = run.model_requests || [];
    const table = h(
      "table",
      { class: "costs", id: "costs" },
      h(
        "thead",
        {},
        h("tr", {}, h("th", {}, "Step"), h("th", {}, "Model"), h("th", { class: "num" }, "Tokens in"), h("th", { class: "num" }, "Tokens out"), h("th", { class: "num" }, "Duration"), h("th", { class: "num" }, "Cost")),
      ),
    );
    const tbody = h("tbody");
    for (const r of requests) {
      tbody.appendChild(
        h(
          "tr",
          {},
          h("td", { class: "muted" }, r.function_id),
          h("td", { class: "mono" }, r.model_name || "—"),
          h("td", { class: "num" }, fmtInt(r.input_tokens)),
          h("td", { class: "num" }, fmtInt(r.output_tokens)),
          h("td", { class: "num" }, fmtDuration(r.duration_ms)),
          h("td", { class: "num cost" }, fmtCost(r.cost_usd)),
        ),
      );
    }
    if (requests.length === 0) tbody.appendChild(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No model requests yet.")));
    table.appendChild(tbody);
    table.appendChild(
      h(
        "tfoot",
        {},
        h(
          "tr",
          {},
          h("th", { colspan: 2 }, "Total"),
          h("th", { class: "num" }, fmtInt(run.input_tokens)),
          h("th", { class: "num" }, fmtInt(run.output_tokens)),
          h("th", { class: "num" }, fmtDuration(run.duration_ms)),
          h("th", { class: "num cost", id: "total-cost" }, fmtCost(run.cost_usd)),
        ),
      ),
    );
    return table;
  }

  // --- Approvals (shared by the inbox and the run view) ----------------------------------------------------

  const reasonDrafts = new Map(); // "run\ncall" -> reason typed so far, kept across refreshes

  function approvalCard(approval, onDecided) {
    const key = approval.workflow_id + "\n" + approval.tool_call_id;
    const reason = h("input", {
      type: "text",
      class: "reason",
      placeholder: "Reason (optional, sent to the model on deny)",
      "aria-label": "Reason",
      value: reasonDrafts.get(key) || "",
    });
    reason.addEventListener("input", () => reasonDrafts.set(key, reason.value));
    const result = h("div", { class: "decision-result" });
    const isApproval = !approval.kind || approval.kind === "approval";
    const approveButton = h("button", { type: "button", class: "approve" }, "Approve");
    const denyButton = h("button", { type: "button", class: "deny" }, "Deny");

    async function decide(action) {
      approveButton.disabled = denyButton.disabled = true;
      const body = { args_digest: approval.args_digest };
      if (action === "deny") body.reason = reason.value.trim() || null;
      try {
        await api(
          `/api/runs/${encodeURIComponent(approval.workflow_id)}/approvals/${encodeURIComponent(approval.tool_call_id)}/${action}`,
          { method: "POST", body },
        );
        reasonDrafts.delete(key);
        result.textContent = action === "approve" ? "Approved." : "Denied.";
        result.className = "decision-result ok";
        flash(`${action === "approve" ? "Approved" : "Denied"} ${approval.tool_name} in ${approval.workflow_id}`);
        if (onDecided) onDecided();
      } catch (error) {
        result.textContent = error.message;
        result.className = "decision-result error";
        approveButton.disabled = denyButton.disabled = false;
      }
    }

    approveButton.addEventListener("click", () => decide("approve"));
    denyButton.addEventListener("click", () => decide("deny"));

    return h(
      "div",
      { class: "approval", "data-workflow-id": approval.workflow_id, "data-tool-call-id": approval.tool_call_id },
      h(
        "div",
        { class: "approval-head" },
        h("span", { class: "tool-name mono" }, approval.tool_name),
        h("span", { class: "tag" }, approval.kind || "approval"),
        " in ",
        runLink(approval.workflow_id),
        approval.agent_name ? h("span", { class: "muted" }, " (" + approval.agent_name + ")") : null,
        h("span", { class: "muted small right" }, "asked " + fmtTime(approval.requested_at)),
      ),
      h("pre", { class: "args" }, fmtArgs(approval.args)),
      h("div", { class: "muted small mono" }, "call ", approval.tool_call_id, " · digest ", String(approval.args_digest || "").slice(0, 12)),
      isApproval
        ? h("div", { class: "decide" }, reason, approveButton, denyButton)
        : h("div", { class: "muted" }, "This call waits for an external result: answer it with `dbos-pydantic-ai approvals deliver`."),
      result,
    );
  }

  function renderApprovals() {
    const gen = generation;
    const list = h("div", { id: "approvals-list" });
    const message = h("div");
    append(app, [
      h("section", { class: "toolbar" }, h("h1", {}, "Pending approvals"), h("span", { class: "muted" }, "Tool calls that waiting runs need a decision on, oldest first.")),
      message,
      list,
    ]);
    let shownKeys = "";

    async function load(force) {
      const data = await loadForView(gen, message, "/api/approvals");
      if (data === null) return;
      const keys = data.approvals.map((a) => a.workflow_id + "\n" + a.tool_call_id + "\n" + a.args_digest).join("\n\n");
      const badge = document.getElementById("approval-count");
      badge.textContent = String(data.approvals.length);
      badge.hidden = data.approvals.length === 0;
      // Do not rebuild (and lose focus or a half-typed reason) when nothing changed.
      if (!force && keys === shownKeys) return;
      shownKeys = keys;
      clear(list);
      if (data.approvals.length === 0) list.appendChild(h("p", { class: "empty" }, "Nothing is waiting for a decision."));
      for (const approval of data.approvals) list.appendChild(approvalCard(approval, null));
    }

    load(true);
    every(REFRESH_MS, () => {
      if (document.visibilityState === "visible") load(false);
    });
  }

  // --- Workers and queues ---------------------------------------------------------------------------------

  const WORKER_STATES = {
    alive: "heartbeating",
    silent: "alive in the table, but silent for longer than its dead-after: presumed dead, not taken over yet",
    stopped: "stopped on purpose; its unfinished runs were handed back to their queues",
    dead: "declared dead by another worker, which took over its runs",
  };

  function stateBadge(state) {
    const s = String(state || "unknown");
    return h("span", { class: "badge worker-" + s.replace(/[^a-z]/g, ""), title: WORKER_STATES[s] || null }, s);
  }

  function renderWorkers() {
    const gen = generation;
    const workersMessage = h("div");
    const queuesMessage = h("div");
    const workersBody = h("tbody");
    const queuesBody = h("tbody");
    const note = h("p", { class: "muted small", id: "workers-note" });
    const autoRefresh = h("input", { type: "checkbox", id: "workers-auto-refresh", checked: true });
    const num = (c) => h("th", { class: "num" }, c);
    append(app, [
      h("section", { class: "toolbar" }, h("h1", {}, "Workers"), h("label", { class: "inline" }, autoRefresh, " auto-refresh")),
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Workers"),
        workersMessage,
        note,
        h(
          "table",
          { class: "runs", id: "workers-table" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Executor id", "Version", "Host / pid", "State", "Last heartbeat"].map((c) => h("th", {}, c)),
              num("Runs in flight"),
              num("Taken over from it"),
              num("Taken over by it"),
              h("th", {}, "Taken over"),
              h("th", {}, "Queues"),
            ),
          ),
          workersBody,
        ),
      ),
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Queues"),
        queuesMessage,
        h(
          "table",
          { class: "runs", id: "queues-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Queue"), num("Enqueued"), num("Pending"), h("th", {}, "Live workers listening"))),
          queuesBody,
        ),
      ),
    ]);

    async function loadWorkers() {
      const data = await loadForView(gen, workersMessage, "/api/workers");
      if (data === null) return;
      note.textContent = data.fleet
        ? `Heartbeat ages by the database's clock (${fmtTime(data.now)}).`
        : "No worker has joined a fleet on this database yet (dbos-pydantic-ai worker creates the fleet's tables).";
      clear(workersBody);
      if (data.workers.length === 0) workersBody.appendChild(h("tr", {}, h("td", { colspan: 10, class: "empty" }, "No workers.")));
      for (const w of data.workers) {
        workersBody.appendChild(
          h(
            "tr",
            { class: "worker-row", "data-executor-id": w.executor_id, "data-state": w.state },
            h("td", { class: "mono nowrap" }, w.executor_id),
            h("td", { class: "mono nowrap" }, w.app_version),
            h("td", { class: "mono" }, `${w.hostname} / ${w.pid}`),
            h("td", { class: "state" }, stateBadge(w.state)),
            h("td", { class: "heartbeat nowrap", title: `${fmtTime(w.heartbeat_at)}; dead after ${w.dead_after_seconds} s of silence` }, fmtAge(w.heartbeat_age_seconds)),
            h("td", { class: "num in-flight" }, fmtInt(w.runs_in_flight)),
            h("td", { class: "num taken-from" }, fmtInt(w.runs_taken_over_from_it)),
            h("td", { class: "num taken-by" }, fmtInt(w.runs_taken_over_by_it)),
            h("td", { class: "taken-over" }, w.taken_over_by ? `by ${w.taken_over_by} at ${fmtTime(w.taken_over_at)}` : "—"),
            h("td", { class: "mono small" }, w.queues.join(", ") || "—"),
          ),
        );
      }
    }

    async function loadQueues() {
      const data = await loadForView(gen, queuesMessage, "/api/queues");
      if (data === null) return;
      clear(queuesBody);
      if (data.queues.length === 0) queuesBody.appendChild(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No queued or running runs on a queue.")));
      for (const q of data.queues) {
        queuesBody.appendChild(
          h(
            "tr",
            { class: "queue-row", "data-queue": q.queue_name },
            h("td", { class: "mono" }, q.queue_name, q.internal ? h("span", { class: "tag", title: "DBOS's own queue: recovered, resumed and taken-over runs pass through it" }, "internal") : null),
            h("td", { class: "num enqueued" }, fmtInt(q.enqueued)),
            h("td", { class: "num pending" }, fmtInt(q.pending)),
            h("td", { class: "mono small listeners" }, q.internal ? "every worker" : q.workers.join(", ") || "none"),
          ),
        );
      }
    }

    const load = () => Promise.all([loadWorkers(), loadQueues()]);
    load();
    every(REFRESH_MS, () => {
      if (autoRefresh.checked && document.visibilityState === "visible") load();
    });
  }

  // --- Live output ---------------------------------------------------------------------------------------

  /**
   * Follows a run's durable event stream. Events after a `superseded_from` marker replace everything from that
   * offset on (the abandoned attempt of a retried model request). EventSource resends Last-Event-ID itself when
   * it reconnects.
   */
  function liveView(workflowId, onEnd) {
    const events = []; // [{offset, ev}]
    const output = h("div", { class: "live-output", id: "live-output", "aria-live": "polite" });
    const state = h("span", { class: "muted small", id: "live-state" }, "connecting…");
    const panel = h("section", { class: "panel live" }, h("h2", {}, "Live output ", state), output);

    let url = `/api/runs/${encodeURIComponent(workflowId)}/events`;
    if (TOKEN) url += "?token=" + encodeURIComponent(TOKEN);
    const source = new EventSource(url);
    let ended = false;

    /** Groups the kept events into model requests; each request's text/thinking parts assembled by index. */
    function render() {
      clear(output);
      const blocks = [];
      let block = null;
      const newBlock = (label) => {
        block = { label, items: [], parts: new Map() };
        blocks.push(block);
      };
      for (const { ev } of events) {
        const kind = String(ev.kind || "");
        if (ev.superseded_from !== null && ev.superseded_from !== undefined) {
          newBlock(`model request retried: its earlier attempt (from offset ${ev.superseded_from}) was dropped`);
          continue;
        }
        if (kind === "model_request_started") {
          newBlock("model request" + (ev.step_id !== null && ev.step_id !== undefined ? ` (step ${ev.step_id})` : ""));
          continue;
        }
        if (!block) newBlock(null);
        const isText = ev.part_kind === "text" || ev.part_kind === "thinking" || (ev.part_kind == null && typeof ev.text === "string");
        if ((kind === "part_start" || kind === "part_delta" || kind === "part_end") && isText) {
          const index = ev.index === null || ev.index === undefined ? -1 : ev.index;
          let part = block.parts.get(index);
          if (!part) {
            part = { kind: ev.part_kind === "thinking" ? "thinking" : "text", text: "" };
            block.parts.set(index, part);
            block.items.push(part);
          }
          // A start or end event carries the whole part so far; a delta carries what follows.
          if (kind === "part_delta") part.text += ev.text || "";
          else part.text = ev.text || "";
        } else if (kind === "tool_call") {
          block.items.push({ kind: "tool_call", tool_name: ev.tool_name, args: ev.args });
        } else if (kind === "tool_result") {
          block.items.push({ kind: "tool_result", tool_name: ev.tool_name, content: ev.content });
        }
      }
      for (const b of blocks) {
        const el = h("div", { class: "live-block" }, b.label ? h("div", { class: "live-label muted small" }, b.label) : null);
        for (const item of b.items) {
          if (item.kind === "text" || item.kind === "thinking") {
            el.appendChild(h("div", { class: "live-text " + item.kind }, item.text));
          } else if (item.kind === "tool_call") {
            el.appendChild(h("div", { class: "live-tool" }, "→ ", h("span", { class: "mono" }, item.tool_name || "tool"), h("pre", { class: "args" }, fmtArgs(item.args))));
          } else {
            const content = item.content === null || item.content === undefined ? "" : typeof item.content === "string" ? item.content : JSON.stringify(item.content);
            el.appendChild(h("div", { class: "live-tool result" }, "← ", h("span", { class: "mono" }, item.tool_name || "tool"), ": ", content));
          }
        }
        output.appendChild(el);
      }
      if (events.length === 0) output.appendChild(h("span", { class: "muted" }, "Waiting for events…"));
      output.scrollTop = output.scrollHeight;
    }

    source.onopen = () => {
      if (!ended) state.textContent = "streaming";
    };
    source.onmessage = (message) => {
      let ev;
      try {
        ev = JSON.parse(message.data);
      } catch {
        return;
      }
      const offset = Number(ev.offset !== undefined ? ev.offset : message.lastEventId);
      if (ev.superseded_from !== null && ev.superseded_from !== undefined) {
        const from = Number(ev.superseded_from);
        for (let i = events.length - 1; i >= 0; i--) if (events[i].offset >= from) events.splice(i, 1);
      }
      if (events.length && offset <= events[events.length - 1].offset) return; // already shown
      events.push({ offset, ev });
      render();
    };
    source.addEventListener("end", () => {
      ended = true;
      source.close();
      state.textContent = "run ended";
      if (onEnd) onEnd();
    });
    source.addEventListener("error", (message) => {
      // The server's own `event: error` (a MessageEvent with data), not a connection error.
      if (!(message instanceof MessageEvent) || !message.data) return;
      ended = true;
      source.close();
      let detail = message.data;
      try {
        detail = JSON.parse(message.data).error || detail;
      } catch {
        // keep the raw text
      }
      state.textContent = "stream error: " + detail;
    });
    source.onerror = () => {
      if (ended) return;
      // EventSource reconnects by itself (with Last-Event-ID); a closed one gave up (e.g. 404 or 401).
      state.textContent = source.readyState === EventSource.CLOSED ? "stream unavailable" : "reconnecting…";
    };
    render();
    return { panel, close: () => source.close() };
  }

  // --- A run -----------------------------------------------------------------------------------------------

  function summaryView(run) {
    const rows = [
      ["Agent", run.agent],
      ["Workflow", run.workflow_name],
      ["Status", statusBadge(run.status)],
      ["Started", fmtTime(run.started_at)],
      ["Duration", run.duration_ms === null ? (RUNNING.has(run.status) ? "running" : "—") : fmtDuration(run.duration_ms)],
      ["Model requests", fmtInt(Array.isArray(run.model_requests) ? run.model_requests.length : run.model_requests)],
      ["Tokens in / out", `${fmtInt(run.input_tokens)} / ${fmtInt(run.output_tokens)}`],
      ["Cost", h("span", { class: "cost", id: "run-cost" }, fmtCost(run.cost_usd))],
    ];
    if (run.executor_id) rows.push(["Worker", h("span", { class: "mono", id: "run-worker" }, run.executor_id + (run.app_version ? ` (version ${run.app_version})` : ""))]);
    if (run.recovery) rows.push(["Recovered", h("span", { id: "run-recovery" }, recoveryText(run))]);
    if (run.takeovers && run.takeovers.length) {
      rows.push(["Taken over", h("ul", { class: "takeovers", id: "run-takeovers" }, run.takeovers.map((t) => h("li", {}, takeoverText(t))))]);
    }
    if (run.trace) rows.push(["Trace", h("a", { href: run.trace.url, id: "run-trace", target: "_blank", rel: "noopener noreferrer" }, run.trace.trace_id)]);
    if (run.parent_workflow_id) rows.push(["Parent run", runLink(run.parent_workflow_id)]);
    if (run.forked_from) {
      rows.push([
        "Forked from",
        [runLink(run.forked_from), " ", h("a", { href: `#/compare/${encodeURIComponent(run.forked_from)}/${encodeURIComponent(run.workflow_id)}`, class: "compare-link" }, "compare")],
      ]);
    }
    return h("dl", { class: "summary" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function actionsView(run, reload) {
    const box = h("div", { class: "actions" });
    const running = RUNNING.has(run.status);

    async function post(label, path, body) {
      try {
        const data = await api(path, { method: "POST", body: body === undefined ? {} : body });
        flash(label + " sent.");
        return data;
      } catch (error) {
        flash(label + " failed: " + error.message, true);
        return null;
      }
    }

    const cancel = h("button", { type: "button", id: "action-cancel", disabled: !running }, "Cancel");
    cancel.addEventListener("click", async () => {
      if (!window.confirm("Cancel this run?")) return;
      if (await post("Cancel", `/api/runs/${encodeURIComponent(run.workflow_id)}/cancel`)) reload();
    });
    const resume = h("button", { type: "button", id: "action-resume", disabled: running || run.status === "SUCCESS" }, "Resume");
    resume.addEventListener("click", async () => {
      if (await post("Resume", `/api/runs/${encodeURIComponent(run.workflow_id)}/resume`)) reload();
    });
    append(box, [cancel, resume]);

    const requests = run.model_requests || [];
    if (requests.length) {
      const select = h(
        "select",
        { id: "fork-step", "aria-label": "Model request to fork from" },
        requests.map((r, i) => h("option", { value: String(r.function_id) }, `model request ${i + 1} (step ${r.function_id}${r.model_name ? ", " + r.model_name : ""})`)),
      );
      const fork = h("button", { type: "button", id: "action-fork" }, "Fork from here");
      fork.addEventListener("click", async () => {
        const data = await post("Fork", `/api/runs/${encodeURIComponent(run.workflow_id)}/fork`, { start_step: Number(select.value) });
        if (data && data.workflow_id) {
          window.location.hash = `#/compare/${encodeURIComponent(run.workflow_id)}/${encodeURIComponent(data.workflow_id)}`;
        }
      });
      append(box, [h("span", { class: "sep" }), select, fork]);
    }
    return box;
  }

  /** A run's model retries: waiting (attempt, next try, last error), or gave up, with Continue when it can be. */
  function retryView(run, reload) {
    const retry = run.retry;
    const box = h(
      "section",
      { class: "panel retry" + (retry.waiting ? " waiting" : ""), id: "run-retry" },
      h("h2", {}, "Model retries"),
      h("p", { class: "retry-state" }, retryText(retry, run.status), retry.step_id ? ` (model request of step ${retry.step_id})` : ""),
      h("div", { class: "err-snippet retry-error" }, "Last error: ", retry.last_error),
    );
    if (run.can_continue) {
      const button = h("button", { type: "button", id: "action-continue" }, "Continue");
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          const data = await api(`/api/runs/${encodeURIComponent(run.workflow_id)}/continue`, { method: "POST", body: {} });
          flash(`Continued from step ${data.step}: a worker picks the run up.`);
          reload();
        } catch (error) {
          flash("Continue failed: " + error.message, true);
          button.disabled = false;
        }
      });
      append(box, [
        h("p", { class: "muted small" }, "Once the provider is back, continue the run from its failed model request: same run id, nothing it finished is redone."),
        button,
      ]);
    }
    return box;
  }

  function renderRun(workflowId) {
    const gen = generation;
    let live = null;
    let lastStatus = null;
    const message = h("div");
    const body = h("div");
    const liveSlot = h("div");
    append(app, [
      h("section", { class: "toolbar" }, h("a", { href: "#/runs", class: "back" }, "← Runs"), h("h1", { class: "mono run-id" }, workflowId)),
      message,
      liveSlot,
      body,
    ]);
    cleanups.push(() => live && live.close());

    async function load() {
      const run = await loadForView(gen, message, "/api/runs/" + encodeURIComponent(workflowId));
      if (run === null) return;
      const running = RUNNING.has(run.status);
      if (running && !live) {
        live = liveView(workflowId, () => load());
        liveSlot.appendChild(live.panel);
      }
      lastStatus = run.status;
      const focusedReason = document.activeElement && document.activeElement.classList.contains("reason");
      if (focusedReason && running) return; // do not rebuild under a reviewer's cursor
      clear(body);
      append(body, [
        h(
          "section",
          { class: "panel" },
          h("div", { class: "panel-head" }, h("h2", {}, "Run"), actionsView(run, load)),
          summaryView(run),
          run.error ? h("div", { class: "error-box", id: "run-error" }, h("strong", {}, "Error: "), run.error) : null,
        ),
        run.retry ? retryView(run, load) : null,
        run.pending_approvals && run.pending_approvals.length
          ? h("section", { class: "panel", id: "run-approvals" }, h("h2", {}, "Waiting for a decision"), run.pending_approvals.map((a) => approvalCard(a, load)))
          : null,
        h("div", { class: "columns" },
          h("section", { class: "panel", id: "conversation" }, h("h2", {}, "Conversation"), conversationView(run.conversation)),
          h(
            "div",
            {},
            h("section", { class: "panel" }, h("h2", {}, "Tokens and cost"), costView(run)),
            run.children && run.children.length
              ? h(
                  "section",
                  { class: "panel", id: "children" },
                  h("h2", {}, "Child runs"),
                  h("ul", { class: "children" }, run.children.map((c) => h("li", {}, runLink(c.workflow_id), " ", h("span", { class: "mono muted" }, c.workflow_name), " ", statusBadge(c.status)))),
                )
              : null,
            h("section", { class: "panel" }, h("h2", {}, "Steps"), timelineView(run.steps, run.started_at, run.recovery)),
          ),
        ),
      ]);
    }

    load();
    every(3000, () => {
      if (document.visibilityState === "visible" && (lastStatus === null || RUNNING.has(lastStatus))) load();
    });
  }

  // --- Compare ---------------------------------------------------------------------------------------------

  function renderCompare(left, right) {
    const gen = generation;
    const message = h("div");
    const body = h("div", { class: "compare", id: "compare" });
    append(app, [
      h("section", { class: "toolbar" }, h("a", { href: runHref(right), class: "back" }, "← Run"), h("h1", {}, "Compare")),
      message,
      body,
    ]);

    function column(title, run, other) {
      const differs = (a, b) => (JSON.stringify(a) !== JSON.stringify(b) ? "differs" : "");
      const nRequests = (r) => (r.model_requests || []).length;
      const stats = [
        ["Status", statusBadge(run.status), differs(run.status, other.status)],
        ["Model requests", fmtInt(nRequests(run)), differs(nRequests(run), nRequests(other))],
        ["Tokens in", fmtInt(run.input_tokens), differs(run.input_tokens, other.input_tokens)],
        ["Tokens out", fmtInt(run.output_tokens), differs(run.output_tokens, other.output_tokens)],
        ["Cost", fmtCost(run.cost_usd), differs(run.cost_usd, other.cost_usd)],
        ["Duration", fmtDuration(run.duration_ms), ""],
      ];
      return h(
        "section",
        { class: "panel compare-col", "data-workflow-id": run.workflow_id },
        h("h2", {}, title, " ", runLink(run.workflow_id)),
        h("dl", { class: "summary" }, stats.map(([k, v, cls]) => [h("dt", {}, k), h("dd", { class: cls }, v)])),
        h("h3", {}, "Output"),
        h("div", { class: "output " + differs(run.output, other.output) }, run.output === null || run.output === undefined ? h("span", { class: "muted" }, "no output") : run.output),
        h("h3", {}, "Conversation"),
        conversationView(run.conversation),
      );
    }

    async function load() {
      const data = await loadForView(gen, message, "/api/compare" + query({ left, right }));
      if (data === null) return;
      clear(body);
      const leftTitle = data.right.forked_from === data.left.workflow_id ? "Original" : "Left";
      const rightTitle = data.right.forked_from === data.left.workflow_id ? "Fork" : "Right";
      append(body, [column(leftTitle, data.left, data.right), column(rightTitle, data.right, data.left)]);
      return RUNNING.has(data.left.status) || RUNNING.has(data.right.status);
    }

    let stillRunning = true;
    load().then((r) => (stillRunning = r !== false));
    every(3000, async () => {
      if (stillRunning && document.visibilityState === "visible") stillRunning = (await load()) !== false;
    });
  }

  route();
})();
