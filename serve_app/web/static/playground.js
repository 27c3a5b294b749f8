/*
 * The playground: write Python, run it through the API of this origin, watch its output stream.
 *
 * The API key lives in this tab's sessionStorage only (never localStorage, never a cookie) and
 * travels in the Authorization header. Streams are read with fetch() and a ReadableStream
 * parser of Server-Sent Events (EventSource cannot send the header). Everything a program or the
 * API says is shown as text (textContent, text nodes): nothing it prints is ever parsed as HTML.
 * Images among its artifacts are shown from blob: URLs of their bytes (raster types only; SVG
 * and HTML are offered as downloads, never rendered).
 */
"use strict";

(function () {
  const KEY_STORAGE = "exec-agent-playground-key";
  const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    key: $("api-key"),
    keyForm: $("key-form"),
    forget: $("key-forget"),
    message: $("message"),
    runtime: $("runtime"),
    mode: $("mode"),
    run: $("run"),
    stop: $("stop"),
    clear: $("clear"),
    code: $("code"),
    stdin: $("stdin"),
    runs: $("runs"),
    template: $("run-template"),
    editorNote: $("editor-note"),
    sessionBar: $("session-bar"),
    sessionId: $("session-id"),
    sessionStatus: $("session-status"),
    sessionDetail: $("session-detail"),
    sessionStart: $("session-start"),
    sessionEnd: $("session-end"),
  };

  const state = {
    editor: null,
    running: null, // the AbortController of the run in flight
    session: null, // the session record (API.md "Sessions") of session mode
    cells: 0,
    blobUrls: [],
  };

  // --- small helpers

  function text(element, value) {
    element.textContent = value == null ? "" : String(value);
  }

  function showMessage(value) {
    text(ui.message, value);
    ui.message.hidden = !value;
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function headers(extra) {
    return Object.assign({ Authorization: "Bearer " + apiKey() }, extra || {});
  }

  function formatBytes(bytes) {
    if (bytes == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function formatSeconds(seconds) {
    return seconds == null ? "–" : Number(seconds).toFixed(3) + " s";
  }

  /** An API error answer as a sentence: status, code, message, details, Retry-After. */
  async function describeError(response) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch (ignored) {
      error = null;
    }
    let sentence = response.status + " " + ((error && error.code) || response.statusText || "error");
    if (error && error.message) sentence += ": " + error.message;
    if (error && Array.isArray(error.details) && error.details.length) {
      const parts = error.details.map((detail) =>
        typeof detail === "object" && detail !== null
          ? [detail.field, detail.message].filter(Boolean).join(": ") || JSON.stringify(detail)
          : String(detail),
      );
      sentence += " (" + parts.join("; ") + ")";
    }
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) sentence += " — retry after " + retryAfter + " s";
    if (response.status === 401) sentence += " — check the API key above";
    return { status: response.status, code: error && error.code, sentence: sentence };
  }

  class ApiError extends Error {
    constructor(described) {
      super(described.sentence);
      this.status = described.status;
      this.code = described.code;
    }
  }

  async function api(method, path, body) {
    const init = { method: method, headers: headers() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (!response.ok) throw new ApiError(await describeError(response));
    return response.status === 204 ? null : response.json();
  }

  // --- the key and the runtimes

  function saveKey() {
    const value = ui.key.value.trim();
    if (value === apiKey()) return; // Enter fires both change and submit: one request
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadRuntimes();
  }

  async function loadRuntimes() {
    if (!apiKey()) {
      showMessage("Paste an API key to start (exec-agent keys create --name NAME prints one).");
      return;
    }
    const previous = ui.runtime.value;
    placeholder("loading…");
    try {
      const answer = await api("GET", "/v1/runtimes");
      ui.runtime.replaceChildren();
      for (const runtime of answer.items) {
        const option = document.createElement("option");
        option.value = runtime.name;
        text(option, runtime.name + " (Python " + runtime.python_version + ")");
        option.selected = previous ? runtime.name === previous : runtime.default;
        ui.runtime.appendChild(option);
      }
      showMessage("");
    } catch (error) {
      placeholder("(unavailable: the default)");
      showMessage("Runtimes: " + error.message);
    }
  }

  /** The runtime list while it cannot be shown: one option, the server's default. */
  function placeholder(label) {
    const option = document.createElement("option");
    option.value = "";
    text(option, label);
    ui.runtime.replaceChildren(option);
  }

  // --- the editor

  function setUpEditor() {
    if (typeof window.CodeMirror === "function") {
      state.editor = window.CodeMirror.fromTextArea(ui.code, {
        mode: "python",
        lineNumbers: true,
        indentUnit: 4,
        matchBrackets: true,
        viewportMargin: Infinity,
        extraKeys: { Tab: (cm) => cm.execCommand("indentMore") },
      });
    } else {
      text(ui.editorNote, "Plain editor: run scripts/vendor-web-assets for the code editor.");
      ui.editorNote.hidden = false;
    }
  }

  function code() {
    return state.editor ? state.editor.getValue() : ui.code.value;
  }

  // --- a run's card

  function newCard(label, echo) {
    const card = ui.template.content.firstElementChild.cloneNode(true);
    text(card.querySelector(".run-label"), label);
    if (echo) {
      const pre = card.querySelector(".code-echo");
      text(pre, echo);
      pre.hidden = false;
    }
    return card;
  }

  function setStatus(card, status) {
    card.dataset.status = status;
    const badge = card.querySelector(".status");
    text(badge, status);
    badge.className = "badge status status-" + status.replace(/[^a-z_]/g, "");
  }

  function showError(card, sentence) {
    const element = card.querySelector(".error");
    text(element, sentence);
    element.hidden = false;
    setStatus(card, "error");
    hideEmptyStreams(card);
  }

  /** Once a run is over, a stream it never wrote to takes no room. */
  function hideEmptyStreams(card) {
    for (const box of card.querySelectorAll(".stream-box")) {
      box.hidden = box.querySelector("pre").textContent === "";
    }
  }

  function appendOutput(card, stream, chunk) {
    // A text node: whatever the program printed stays characters.
    card.querySelector("." + stream).appendChild(document.createTextNode(chunk));
  }

  function addTerms(list, terms) {
    list.replaceChildren();
    for (const [term, value] of terms) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      text(dt, term);
      text(dd, value);
      list.append(dt, dd);
    }
    list.hidden = terms.length === 0;
  }

  function renderRecord(card, record) {
    setStatus(card, record.status);
    const exit = record.signal != null ? "signal " + record.signal : "exit code " + record.exit_code;
    text(card.querySelector(".exit-code"), record.exit_code == null && record.signal == null ? "" : exit);
    text(card.querySelector(".run-id"), record.id);
    // The record is the whole truth: it replaces what the stream showed (the same, unless a
    // slow reader lost chunks, which the record still holds).
    text(card.querySelector(".stdout"), record.stdout);
    text(card.querySelector(".stderr"), record.stderr);
    hideEmptyStreams(card);
    if (record.result != null) {
      text(card.querySelector(".result"), record.result);
      card.querySelector(".result-box").hidden = false;
    }
    const usage = [
      ["wall time", formatSeconds(record.wall_time_s)],
      ["CPU time", formatSeconds(record.cpu_time_s)],
      ["peak memory", formatBytes(record.peak_memory_bytes)],
      ["runtime", record.runtime || "–"],
    ];
    if (record.stdout_truncated) usage.push(["stdout", "truncated at its cap"]);
    if (record.stderr_truncated) usage.push(["stderr", "truncated at its cap"]);
    if (record.cached) usage.push(["cached from", record.cached_from]);
    addTerms(card.querySelector(".usage"), usage);
    addTerms(card.querySelector(".limits"), Object.entries(record.limits || {}).map(
      ([name, value]) => ["limit " + name, value],
    ));
    renderArtifacts(card.querySelector(".artifacts"), record.artifacts || [], record.artifacts_truncated);
  }

  function bytesOf(base64) {
    const binary = atob(base64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function blobUrl(bytes, type) {
    const url = URL.createObjectURL(new Blob([bytes], { type: type }));
    state.blobUrls.push(url);
    return url;
  }

  function renderArtifacts(container, artifacts, truncated) {
    container.replaceChildren();
    for (const artifact of artifacts) {
      const bytes = bytesOf(artifact.base64);
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      figure.appendChild(caption);
      if (INLINE_IMAGES.has(artifact.media_type)) {
        const image = document.createElement("img");
        image.alt = artifact.path;
        image.src = blobUrl(bytes, artifact.media_type);
        figure.appendChild(image);
      }
      // Every file can be saved; the blob is opaque bytes, so no browser renders it as a page.
      const link = document.createElement("a");
      link.href = blobUrl(bytes, "application/octet-stream");
      link.download = artifact.path.split("/").pop() || "artifact";
      link.className = "download";
      text(link, artifact.path);
      const about = document.createElement("span");
      text(about, " " + (artifact.media_type || "?") + ", " + formatBytes(artifact.size_bytes));
      caption.append(link, about);
      container.appendChild(figure);
    }
    if (truncated) {
      const note = document.createElement("p");
      note.className = "subtle";
      text(note, "Some artifacts were left out (the record's caps).");
      container.appendChild(note);
    }
  }

  function clearRuns() {
    for (const url of state.blobUrls) URL.revokeObjectURL(url);
    state.blobUrls = [];
    ui.runs.replaceChildren();
  }

  // --- Server-Sent Events over fetch

  /** Calls onEvent(name, data) for each event of the response's body, as it arrives. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const dispatch = (block) => {
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    };
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
      if (done) break;
    }
    if (buffer.trim()) dispatch(buffer);
  }

  async function streamRun(card, path, body, controller) {
    const response = await fetch(path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new ApiError(await describeError(response));
    setStatus(card, "running");
    let record = null;
    await readEvents(response, (name, data) => {
      if (name === "stdout" || name === "stderr") appendOutput(card, name, data.text);
      else if (name === "record") record = data;
    });
    if (record === null) throw new Error("the stream ended without a record");
    renderRecord(card, record);
    return record;
  }

  // --- sessions

  function showSession() {
    const session = state.session;
    text(ui.sessionId, session ? session.id : "none");
    const status = session ? session.status : "none";
    text(ui.sessionStatus, status);
    ui.sessionStatus.className = "badge session-" + status;
    let detail = "";
    if (session && session.status === "terminated") {
      detail = "ended: " + (session.terminated_reason || "unknown reason") + " — start a new session to run more cells";
    } else if (session) {
      detail = session.runtime + ", idle timeout " + session.idle_timeout_s + " s";
    }
    text(ui.sessionDetail, detail);
    ui.sessionEnd.disabled = !(session && session.status === "active");
  }

  async function startSession() {
    state.session = await api("POST", "/v1/sessions", ui.runtime.value ? { runtime: ui.runtime.value } : {});
    state.cells = 0;
    showSession();
    return state.session;
  }

  async function refreshSession() {
    if (!state.session) return;
    try {
      state.session = await api("GET", "/v1/sessions/" + encodeURIComponent(state.session.id));
    } catch (error) {
      showMessage("Session: " + error.message);
    }
    showSession();
  }

  async function endSession() {
    if (!state.session) return;
    try {
      await api("DELETE", "/v1/sessions/" + encodeURIComponent(state.session.id));
      showMessage("");
    } catch (error) {
      showMessage("End session: " + error.message);
    }
    await refreshSession();
  }

  // --- running

  async function run() {
    if (state.running) return;
    if (!apiKey()) {
      showMessage("Paste an API key first.");
      ui.key.focus();
      return;
    }
    const inSession = ui.mode.value === "session";
    const source = code();
    const stdin = ui.stdin.value;
    const controller = new AbortController();
    state.running = controller;
    ui.run.disabled = true;
    ui.stop.hidden = false;
    if (!inSession) clearRuns();
    const card = newCard(inSession ? "Cell" : "Run", inSession ? source : "");
    ui.runs.appendChild(card);
    try {
      if (inSession) {
        if (!state.session || state.session.status !== "active") await startSession();
        state.cells += 1;
        text(card.querySelector(".run-label"), "Cell " + state.cells);
        const path = "/v1/sessions/" + encodeURIComponent(state.session.id) + "/executions";
        await streamRun(card, path, { code: source, stdin: stdin }, controller);
      } else {
        const body = { code: source, stdin: stdin };
        if (ui.runtime.value) body.runtime = ui.runtime.value;
        await streamRun(card, "/v1/executions", body, controller);
      }
    } catch (error) {
      if (error.name === "AbortError") showError(card, "stopped: the run was cancelled");
      else showError(card, error.message);
    } finally {
      state.running = null;
      ui.run.disabled = false;
      ui.stop.hidden = true;
      if (inSession) await refreshSession();
      card.scrollIntoView({ block: "nearest" });
    }
  }

  function onModeChange() {
    const inSession = ui.mode.value === "session";
    ui.sessionBar.hidden = !inSession;
    text(ui.run, inSession ? "Run cell" : "Run");
    clearRuns();
    showSession();
  }

  function wrap(action) {
    return () => {
      action().catch((error) => showMessage(error.message));
    };
  }

  // --- wiring

  function init() {
    setUpEditor();
    ui.key.value = apiKey();
    ui.key.addEventListener("change", saveKey);
    ui.keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      saveKey();
    });
    ui.forget.addEventListener("click", () => {
      ui.key.value = "";
      saveKey();
    });
    ui.run.addEventListener("click", run);
    ui.stop.addEventListener("click", () => state.running && state.running.abort());
    ui.clear.addEventListener("click", clearRuns);
    ui.mode.addEventListener("change", onModeChange);
    ui.sessionStart.addEventListener("click", wrap(startSession));
    ui.sessionEnd.addEventListener("click", wrap(endSession));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        run();
      }
    });
    onModeChange();
    loadRuntimes();
  }

  init();
})();
