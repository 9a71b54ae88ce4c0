// PEZ Hard Prompts: show what PEZ is doing on the node itself.
//
// - While a PEZ node runs: the best prompt so far, its similarity and step/total, from the
//   custom websocket event `pez.progress` (throttled to a few redraws per second).
// - When it ends: the final prompt(s) and similarity (from the node's `ui` output, delivered to
//   `onExecuted`) in a read-only text box, with a "copy prompt" button. A node's own closing
//   note (sent with send_progress_text, e.g. Concat's token count) is shown under the prompt.
// - Nodes that optimise (they have a `steps` input) get a "stop & use best" button: it asks the
//   pack's route POST /pez/stop to end the run early, and the node outputs the best prompt so far
//   (Cancel still cancels, without a result). Their seed's "control after generate" starts at
//   "fixed", so a second Run with the same inputs comes from ComfyUI's cache in no time.
// - The shown result is kept in `node.properties.pez_result`, so a saved workflow shows it again
//   when reopened. The text box and the button are never serialized into `widgets_values`
//   (they are the last widgets of the node and have `serialize: false`), so the saved values of
//   the real widgets keep their positions.
//
// Written against ComfyUI frontend 1.32.9 (ComfyUI 0.3.75); tested on 1.58.1 (ComfyUI 0.33.0) too. It uses the extension API
// (app.registerExtension, api.addEventListener, node.addDOMWidget, node.addWidget, the LiteGraph
// node callbacks); the one frontend detail it relies on is the name of the built-in progress-text
// widget (if that changes, the built-in text simply shows too). Nothing here talks to the network.
//
// The file lives in web/js/, served as /extensions/<pack>/js/pez.js, hence three "../".
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EXTENSION = "pez.hardprompts";
const TAG = "[pez.hardprompts]";

const DISPLAY_WIDGET = "pez_result"; // read-only text box (DOM widget)
const COPY_WIDGET = "copy prompt"; // button
const STOP_WIDGET = "stop & use best"; // button, on nodes that optimise
const STOP_ROUTE = "/pez/stop"; // nodes/stop.py
const SEED_CONTROL_WIDGET = "control_after_generate";
const SEED_CONTROL_DEFAULT = "fixed";
const RESULT_PROPERTY = "pez_result"; // node.properties key that keeps the last result
// The frontend's own widget for send_progress_text (useNodeProgressText in frontend 1.32.9). It
// has no `serialize: false` of its own, so its text would be saved into widgets_values: on PEZ
// nodes it is excluded from serialization, and where the text box exists it is hidden, since the
// box shows the same: live progress (from pez.progress), or a node's closing note (e.g. Concat's
// token count, Prompt Similarity's per-input scores), which the box shows under the result and
// saves with it.
const BUILTIN_PROGRESS_WIDGET = "$$node-text-preview";

// PEZ Load Model's dropdown shows each model as present, "download N GB" or a toy; the labels come
// from the pack's route (nodes/model.py) and are asked again when the browser refreshes its node list.
const MODEL_NODE = "PEZ_LoadModel";
const MODEL_WIDGET = "model";
const MODEL_LABELS_ROUTE = "/pez/model_labels";
let modelLabels = {};
// The examples' names: "PEZ <n> · <what> (<what it needs>)". The server files them under the pack's
// folder name, which this file's URL does not tell (it is served under the project's name).
const EXAMPLE_NAME = /^PEZ \d+ · /;

const THROTTLE_MS = 250; // at most 4 progress redraws per second and node
// A pez.progress this soon after a result belongs to the finished run (it came late); a later one
// starts a new run.
const LATE_PROGRESS_MS = 2000;
// The text box shows about four lines: prompt, similarity, "12 CLIP tokens", a warning. Nodes 2.0
// (frontend 1.58, Comfy.VueNodes.Enabled) ignores getMinHeight, so the CSS says it too.
const RESULT_MIN_HEIGHT_PX = 88;
const TOAST_LIFE_MS = 2500;
const TOAST_DETAIL_MAX = 120; // characters of the copied prompt shown in the toast
const PEZ_NODE = Symbol("pez.node"); // on the prototypes of PEZ node types
const OPTIMISES = Symbol("pez.optimises"); // on the prototypes of PEZ node types with `steps`
const STATE = Symbol("pez.state"); // per node instance
const running = new Set(); // nodes that show live progress now

function asList(value) {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

/** A prompt's perplexity under the fluency prior (lower reads better), or "" without one. */
function perplexityText(value) {
  const num = Number(value);
  return value !== null && value !== undefined && Number.isFinite(num) ? `perplexity ${num.toFixed(1)}` : "";
}

function formatSimilarity(value) {
  const num = typeof value === "string" ? Number(value) : value;
  return typeof num === "number" && Number.isFinite(num) ? num.toFixed(3) : "n/a";
}

/** "similarity 0.762 (a plain caption: 0.408)": beside the number, what a caption that says nothing scores
 * on the same model and targets (pez_core's reference), so that the number has a scale. */
function similarityText(value, reference) {
  const plain = reference && typeof reference === "object" ? Number(reference.similarity) : NaN;
  const scale = Number.isFinite(plain) ? ` (a plain caption: ${formatSimilarity(plain)})` : "";
  return `similarity ${formatSimilarity(value)}${scale}`;
}

function isPezNodeDef(nodeData) {
  const name = String(nodeData?.name ?? "");
  const category = String(nodeData?.category ?? "");
  return name.startsWith("PEZ_") || category === "PEZ" || category.startsWith("PEZ/");
}

/** PEZ nodes that show their result (output nodes, in the definitions the server sends) get the text
 * box as soon as they are created; any other PEZ node gets it when it first sends text. */
function showsText(nodeData) {
  return nodeData?.output_node === true;
}

function isPezNode(node) {
  return !!node?.[PEZ_NODE];
}

/** The node of an execution id ("12", or "5:12" inside a subgraph), or null. */
function findNode(executionId) {
  if (executionId === undefined || executionId === null || !app.graph) return null;
  let graph = app.graph;
  let node = null;
  for (const part of String(executionId).split(":")) {
    node = graph?.getNodeById?.(part) ?? graph?.getNodeById?.(Number(part)) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

function injectStyle() {
  if (document.getElementById("pez-hardprompts-style")) return;
  const style = document.createElement("style");
  style.id = "pez-hardprompts-style";
  style.textContent = `
    textarea.pez-result {
      min-height: ${RESULT_MIN_HEIGHT_PX}px; width: 100%; box-sizing: border-box; cursor: text; white-space: pre-wrap; overflow-wrap: anywhere;
      font-family: ui-sans-serif, system-ui, sans-serif; font-size: 13px; line-height: 1.35;
    }
    textarea.pez-result.pez-running { opacity: 0.8; font-style: italic; }
    textarea.pez-result.pez-warning { outline: 1px solid #d9a400; }
  `;
  document.head.appendChild(style);
}

function toast(severity, summary, detail) {
  try {
    app.extensionManager?.toast?.add?.({ severity, summary, detail, life: TOAST_LIFE_MS });
  } catch (err) {
    console.warn(TAG, "toast failed", err);
  }
}

// -- the widgets ---------------------------------------------------------------------------

/** Create (once) the text box and the copy button on `node`; return its state. */
function ensureUi(node) {
  if (node[STATE]) return node[STATE];

  const element = document.createElement("textarea");
  element.className = "comfy-multiline-input pez-result";
  element.readOnly = true;
  element.spellcheck = false;
  element.placeholder = "PEZ: the prompt shows here while the node runs and when it is done.";
  element.setAttribute("aria-label", "PEZ result");

  let value = "";
  const display = node.addDOMWidget(DISPLAY_WIDGET, "pez_text", element, {
    serialize: false, // not part of the API prompt (graphToPrompt checks options.serialize)
    getValue: () => value,
    setValue: (v) => {
      value = v === undefined || v === null ? "" : String(v);
      element.value = value;
    },
    getMinHeight: () => RESULT_MIN_HEIGHT_PX,
  });
  display.serialize = false; // not part of widgets_values (LGraphNode.serialize checks this)

  const copy = node.addWidget("button", COPY_WIDGET, null, () => copyPrompt(node), {
    serialize: false,
  });
  copy.serialize = false;
  copy.tooltip = "Copy the prompt to the clipboard";

  let stop = null;
  if (node[OPTIMISES]) {
    stop = node.addWidget("button", STOP_WIDGET, null, () => stopRun(node), { serialize: false });
    stop.serialize = false;
    stop.tooltip =
      "End the optimisation now and output the best prompt found so far (Cancel discards it)";
  }

  node[STATE] = {
    display,
    element,
    copy,
    stop,
    executionId: null, // the node's id in the running prompt (from pez.progress)
    copyText: "",
    timer: null,
    pending: null,
    lastRender: 0,
    live: false, // got pez.progress in this run: progress texts are live, not a note
    note: null, // the last progress text of a run without live progress
    progressText: "",
    done: false,
    doneAt: -Infinity,
  };
  return node[STATE];
}

/** Keep the frontend's built-in progress-text widget of a PEZ node out of saves; hide it where
 * the text box shows its text. It is the last widget, as ours are: LGraphNode.serialize leaves a
 * hole at the index of an unserialized widget, and only trailing holes keep positions intact. */
function tameBuiltinProgress(node) {
  const widget = node.widgets?.find((w) => w?.name === BUILTIN_PROGRESS_WIDGET);
  if (!widget) return;
  if (widget.serialize !== false) {
    widget.serialize = false;
    if (widget.options) widget.options.serialize = false;
  }
  if (node[STATE] && !widget.hidden) {
    widget.hidden = true;
    if (widget.options) widget.options.hidden = true; // what Nodes 2.0 (frontend 1.32.9) reads...
    if (node.removeWidget && node.addCustomWidget) {
      node.removeWidget(widget); // ...when the widget list changes: it drew the widget already
      node.addCustomWidget(widget);
    }
    widget.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });
    node.setDirtyCanvas?.(true, true);
  }
}

function show(node, text, { running = false, warning = false } = {}) {
  const state = ensureUi(node);
  state.display.value = text;
  state.element.classList.toggle("pez-running", running);
  state.element.classList.toggle("pez-warning", warning);
  node.setDirtyCanvas?.(true, false);
}

// -- results -------------------------------------------------------------------------------

// result key -> key in a node's `ui` output; a saved result (node.properties) uses the result keys
const UI_KEYS = { similarity: "pez_similarity", token_count: "pez_token_count", warning: "pez_warning",
  model_similarities: "pez_model_similarities", perplexity: "pez_perplexity", ended: "pez_ended",
  reference: "pez_reference" };
const SAVED_KEYS = { similarity: "similarity", token_count: "token_count", warning: "warning",
  model_similarities: "model_similarities", perplexity: "perplexity", ended: "ended", reference: "reference" };

/** What is shown and saved of a `ui` output (UI_KEYS) or of a saved result (SAVED_KEYS, with its
 * note), checked; null without text. */
function resultFrom(source, keys) {
  if (!source || typeof source !== "object") return null;
  const text = asList(source.text).map((t) => String(t));
  if (!text.length) return null;
  const result = { text };
  for (const [key, from] of Object.entries(keys)) {
    const values = asList(source[from]);
    if (values.length) result[key] = key === "warning" ? values.map((w) => String(w)) : values;
  }
  if (keys === SAVED_KEYS && typeof source.note === "string" && source.note) result.note = source.note;
  return result;
}

function savedResult(node) {
  return resultFrom(node.properties?.[RESULT_PROPERTY], SAVED_KEYS);
}

/** What is shown under the prompt(s): the node's own note if it sent one, else made up here. The
 * warnings are not among them: they go first (see formatResult). */
function metaLines(result) {
  const { text, similarity = [], token_count: tokens = [], warning = [] } = result;
  if (result.note) return result.note === warning.join("\n") ? [] : [result.note];
  const lines = [];
  if (text.length === 1) {
    const meta = [];
    if (similarity.length) meta.push(similarityText(similarity[0], result.reference?.[0]));
    if (tokens.length) meta.push(`${tokens[0]} tokens`);
    const readability = perplexityText(result.perplexity?.[0]);
    if (readability) meta.push(readability);
    if (meta.length) lines.push(meta.join(" · "));
    const perModel = perModelLine(result.model_similarities?.[0]);
    if (perModel) lines.push(perModel);
  }
  // where the run ended ("stopped at step 68 of 3000"): once, for one prompt or a batch
  const ended = [...new Set(asList(result.ended).map((e) => String(e)))];
  if (ended.length) lines.push(ended.join(" · "));
  return lines;
}

/** Each model's similarity of one prompt (PEZ Combine Models, SDXL preset), or "" for one model. */
function perModelLine(values) {
  const list = asList(values);
  return list.length > 1 ? `per model ${list.map((s) => formatSimilarity(s)).join(" · ")}` : "";
}

function formatResult(result) {
  const { text, similarity = [], token_count: tokens = [], warning = [] } = result;
  // A warning (Concat's "over 75 tokens") comes with a long prompt: first, or it is below the box's fold.
  const blocks = warning.length ? [warning.map((w) => `warning: ${w}`).join("\n")] : [];
  if (text.length === 1) {
    blocks.push(text[0]);
  } else {
    text.forEach((prompt, i) => {
      const meta = [`#${i + 1}`];
      if (!result.note && i < similarity.length)
        meta.push(similarityText(similarity[i], result.reference?.[i]));
      if (!result.note && i < tokens.length) meta.push(`${tokens[i]} tokens`);
      const readability = result.note ? "" : perplexityText(result.perplexity?.[i]);
      if (readability) meta.push(readability);
      const perModel = result.note ? "" : perModelLine(result.model_similarities?.[i]);
      if (perModel) meta.push(perModel);
      blocks.push(`${meta.join(" · ")}\n${prompt}`);
    });
  }
  const meta = metaLines(result);
  if (meta.length) blocks.push(meta.join("\n"));
  return blocks.join("\n\n");
}

function showResult(node, result) {
  const state = ensureUi(node);
  state.copyText = result.text.join("\n");
  show(node, formatResult(result), { warning: !!result.warning?.length });
}

/** The node's run is over (result, cancel, failure, removal): no more live progress on it. */
function endRun(node) {
  running.delete(node);
  const state = node[STATE];
  if (!state) return;
  clearTimeout(state.timer);
  state.timer = null;
  state.pending = null;
  state.done = true;
  state.doneAt = performance.now();
}

function onExecuted(node, message) {
  const result = resultFrom(message, UI_KEYS);
  if (!result) return;
  const state = ensureUi(node);
  endRun(node);
  if (state.note && !state.live) {
    result.note = state.note;
  } else {
    // a cached node sends its old result again, without its note: keep the saved one
    const saved = savedResult(node);
    if (saved?.note && sameResult(saved, result)) result.note = saved.note;
  }
  state.note = null;
  node.properties ??= {};
  node.properties[RESULT_PROPERTY] = result;
  showResult(node, result);
  tameBuiltinProgress(node);
}

function sameResult(a, b) {
  const key = (r) => JSON.stringify([r.text, r.similarity, r.token_count, r.warning]);
  return key(a) === key(b);
}

function restore(node) {
  const result = savedResult(node);
  if (result) {
    showResult(node, result);
  } else if (node[STATE]) {
    node[STATE].copyText = "";
    show(node, "");
  }
}

// -- live progress -------------------------------------------------------------------------

function formatProgress(p) {
  const head = [];
  if (p.step !== undefined && p.step !== null) {
    const step = p.total ? `step ${p.step}/${p.total}` : `step ${p.step}`;
    // after the last step the similarity still rises: polishing (pez_core.engine.polish) is at work
    head.push(p.stage === "polishing" ? `polishing after ${step}` : step);
  }
  if (p.similarity !== undefined && p.similarity !== null) {
    head.push(`best similarity ${formatSimilarity(p.similarity)}`);
  }
  const prompt = p.prompt ? String(p.prompt) : "";
  return `running${head.length ? ": " + head.join(" · ") : ""}\n${prompt}`;
}

function flushProgress(node) {
  const state = node[STATE];
  if (!state) return;
  state.timer = null;
  const progress = state.pending;
  state.pending = null;
  if (!progress || state.done) return;
  state.lastRender = performance.now();
  if (progress.prompt) state.copyText = String(progress.prompt);
  state.progressText = formatProgress(progress);
  running.add(node);
  show(node, state.progressText, { running: true });
}

/** The run was cancelled or failed: say so on nodes still showing live progress; the best prompt
 * so far stays on the node and can still be copied. */
function onRunEnded(event) {
  const how = event?.type === "execution_interrupted" ? "cancelled" : "failed";
  for (const node of running) {
    const state = node[STATE];
    if (!state || state.done) {
      running.delete(node);
      continue;
    }
    endRun(node);
    const text = (state.progressText ?? "").replace(/^running/, `${how}, no result`);
    show(node, text, { warning: true });
  }
}

/** Show `progress` on `node`, at most once per THROTTLE_MS (the latest one wins). */
function scheduleProgress(node, progress) {
  const state = ensureUi(node);
  const now = performance.now();
  // A progress event soon after a result belongs to that finished run (it was late); one
  // later than that is a new run (onExecutionStart normally clears `done` already).
  if (state.done) {
    if (now - state.doneAt < LATE_PROGRESS_MS) return;
    state.done = false;
  }
  state.pending = progress;
  const wait = state.lastRender + THROTTLE_MS - now;
  if (wait <= 0) flushProgress(node);
  else state.timer ??= setTimeout(() => flushProgress(node), wait);
}

function onPezProgress(event) {
  const detail = event?.detail ?? {};
  const node = findNode(detail.display_node ?? detail.node);
  if (!isPezNode(node)) return;
  const state = ensureUi(node);
  state.live = true;
  state.executionId = String(detail.node ?? detail.display_node);
  scheduleProgress(node, {
    step: detail.step,
    total: detail.total,
    similarity: detail.similarity,
    prompt: detail.prompt,
    stage: detail.stage,
  });
  tameBuiltinProgress(node);
}

function onBuiltinProgressText(event) {
  const { nodeId, text } = event?.detail ?? {};
  const node = findNode(nodeId);
  if (!isPezNode(node)) return;
  const state = node[STATE];
  if (state && !state.live && text) state.note = String(text);
  // The frontend adds its widget in its own listener of this event, which may run after this
  // one: deal with it once all listeners ran, before the next frame is drawn.
  queueMicrotask(() => tameBuiltinProgress(node));
}

// -- copy ----------------------------------------------------------------------------------

function legacyCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.top = "-1000px";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

async function copyPrompt(node) {
  const text = node[STATE]?.copyText ?? "";
  if (!text) {
    toast("warn", "Nothing to copy yet", "Run the node first.");
    return false;
  }
  let ok = false;
  if (window.isSecureContext && navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      ok = false; // e.g. permission denied: try the old way
    }
  }
  if (!ok) ok = legacyCopy(text);
  const detail = text.length > TOAST_DETAIL_MAX ? `${text.slice(0, TOAST_DETAIL_MAX - 3)}...` : text;
  if (ok) toast("success", "Prompt copied", detail);
  else toast("error", "Could not copy", "Select the text in the node and copy it by hand.");
  return ok;
}

// -- stop & use best -----------------------------------------------------------------------

async function stopRun(node) {
  const state = node[STATE];
  if (!state?.live || state.done || !state.executionId) {
    toast("info", "Not running", "Stop & use best ends a running optimisation early.");
    return false;
  }
  try {
    const response = await api.fetchApi(STOP_ROUTE, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ node_id: state.executionId }),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      toast("info", "Stopping", "The node outputs the best prompt found so far.");
      return true;
    }
    toast("warn", "Could not stop", answer.error ?? `HTTP ${response.status}`);
  } catch (err) {
    console.warn(TAG, "stop request failed", err);
    toast("error", "Could not stop", String(err));
  }
  return false;
}

/** A freshly added node's seed is "fixed": PEZ runs for minutes, ComfyUI's cache answers a
 * repeated Run at once. (A loaded workflow's saved value is restored after this, in configure.) */
function fixSeed(node) {
  const seed = node.widgets?.find((w) => w?.name === "seed");
  const control =
    seed?.linkedWidgets?.find((w) => w?.name === SEED_CONTROL_WIDGET) ??
    node.widgets?.find((w) => w?.name === SEED_CONTROL_WIDGET);
  if (control) control.value = SEED_CONTROL_DEFAULT;
}

// -- the model dropdown and the template browser ------------------------------------------------

async function loadModelLabels() {
  try {
    const response = await api.fetchApi(MODEL_LABELS_ROUTE, { cache: "no-store" });
    if (response.ok) modelLabels = await response.json();
  } catch (err) {
    console.warn(TAG, "model labels not loaded", err);
  }
  app.graph?.setDirtyCanvas?.(true, true);
}

/** The model widget shows labels; its value (saved in workflows) stays the bare name. */
function labelModels(node) {
  const widget = node.widgets?.find((w) => w?.name === MODEL_WIDGET);
  if (widget?.options) widget.options.getOptionLabel = (value) => modelLabels[value] ?? value;
}

/** The server lists a pack's examples in file-system order; the template browser shows them in that
 * order, so ours are put in their numbered order ("PEZ 1 · …" first, the offline one). */
function orderExamples() {
  const original = api.getWorkflowTemplates;
  if (typeof original !== "function") return;
  api.getWorkflowTemplates = async function (...args) {
    const byPack = await original.apply(this, args);
    for (const [pack, names] of Object.entries(byPack ?? {})) {
      if (Array.isArray(names) && names.some((name) => EXAMPLE_NAME.test(name))) {
        byPack[pack] = [...names].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
      }
    }
    return byPack;
  };
}

// -- registration --------------------------------------------------------------------------

/** Run `fn` after the original `proto[name]` (if any); an error in `fn` is logged, not thrown. */
function chain(proto, name, fn) {
  const original = proto[name];
  proto[name] = function (...args) {
    const result = original?.apply(this, args);
    try {
      fn.apply(this, args);
    } catch (err) {
      console.error(TAG, `${name} failed`, err);
    }
    return result;
  };
}

/** An event listener whose errors are logged (tagged), not thrown into the frontend's dispatch. */
function guarded(name, fn) {
  return (event) => {
    try {
      fn(event);
    } catch (err) {
      console.error(TAG, `${name} failed`, err);
    }
  };
}

const extension = {
  name: EXTENSION,

  setup() {
    injectStyle();
    loadModelLabels();
    api.addEventListener("pez.progress", guarded("pez.progress", onPezProgress));
    api.addEventListener("progress_text", guarded("progress_text", onBuiltinProgressText));
    api.addEventListener("execution_interrupted", guarded("execution_interrupted", onRunEnded));
    api.addEventListener("execution_error", guarded("execution_error", onRunEnded));
  },

  async refreshComboInNodes() {
    await loadModelLabels();
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isPezNodeDef(nodeData)) return;
    const proto = nodeType.prototype;
    if (nodeData.name === MODEL_NODE) {
      chain(proto, "onNodeCreated", function () {
        labelModels(this);
      });
    }
    proto[PEZ_NODE] = true;
    proto[OPTIMISES] = !!(nodeData.input?.required?.steps ?? nodeData.input?.optional?.steps);
    const eager = showsText(nodeData);

    chain(proto, "onNodeCreated", function () {
      if (eager) ensureUi(this);
      fixSeed(this);
    });
    chain(proto, "onExecuted", function (message) {
      onExecuted(this, message);
    });
    chain(proto, "onConfigure", function () {
      restore(this);
    });
    chain(proto, "onExecutionStart", function () {
      const state = this[STATE];
      if (state) {
        state.done = false;
        state.live = false;
        state.note = null;
      }
    });
    chain(proto, "onRemoved", function () {
      endRun(this);
    });
    // Keep the saved result out of the (editable) LiteGraph properties panel.
    const onAddPropertyToPanel = proto.onAddPropertyToPanel;
    proto.onAddPropertyToPanel = function (name, panel) {
      if (name === RESULT_PROPERTY) return true;
      return onAddPropertyToPanel?.apply(this, [name, panel]) ?? false;
    };
  },
};

// The pack registers web/ once, through `[tool.comfy] web` in pyproject.toml (it defines no
// WEB_DIRECTORY). Should this module still be imported a second time under another URL (a
// second registration, or a test), the extension is registered only once.
const LOADED = Symbol.for("pez.hardprompts.loaded");
if (!globalThis[LOADED]) {
  globalThis[LOADED] = true;
  orderExamples(); // now: the frontend may list the templates before extensions' setup runs
  app.registerExtension(extension);
}
