// Settings kept in this browser (localStorage "chatserver.settings" = {system?, temperature?, top_p?,
// max_tokens?, seed?}): the system prompt of new chats, and the sampling fields sent with every user,
// regenerate and edit frame (a field left empty is not sent: the server's default applies). The same
// fields in the page's query string (?temperature=0&max_tokens=64, also top_k) take precedence and are
// not saved. The panel also shows the model's name and the theme choice (theme.js).
import { $, ui } from "./dom.js";

const KEY = "chatserver.settings";
// field -> valid(number); all are numbers, integers where `int`
const FIELDS = {
  temperature: { int: false, ok: (v) => v >= 0 && v <= 5 },
  top_p: { int: false, ok: (v) => v > 0 && v <= 1 },
  max_tokens: { int: true, ok: (v) => v >= 1 },
  seed: { int: true, ok: (v) => v >= 0 },
};

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) || "{}");
    return s && typeof s === "object" && !Array.isArray(s) ? s : {};
  } catch { return {}; }
}
function save(s) { try { localStorage.setItem(KEY, JSON.stringify(s)); } catch { /* storage full or disabled */ } }

/** A number from `text` valid for `field`, or null. */
function parse(field, text) {
  const rule = FIELDS[field];
  const v = String(text).trim() === "" ? NaN : Number(text);
  if (!Number.isFinite(v) || (rule.int && !Number.isSafeInteger(v)) || !rule.ok(v)) return null;
  return v;
}

const fromQuery = (() => {
  const q = new URLSearchParams(location.search), out = {};
  for (const field of Object.keys(FIELDS)) {
    const v = q.has(field) ? parse(field, q.get(field)) : null;
    if (v !== null) out[field] = v;
  }
  const k = Number(q.get("top_k"));
  if (q.get("top_k") && Number.isSafeInteger(k) && k >= 0) out.top_k = k;
  return out;
})();

/** The sampling fields of the next user/regenerate/edit frame. */
export function sampling() {
  const stored = load(), out = {};
  for (const field of Object.keys(FIELDS)) {
    const v = stored[field] === undefined ? null : parse(field, stored[field]);
    if (v !== null) out[field] = v;
  }
  return { ...out, ...fromQuery };
}

/** The system prompt for a new chat ("" for the server's default). */
export function systemPrompt() {
  const s = load().system;
  return typeof s === "string" && s.trim() ? s : "";
}

// ---- the panel
const form = $("settings-form");
const inputs = { system: $("set-system"), ...Object.fromEntries(Object.keys(FIELDS).map((f) => [f, $("set-" + f)])) };

function fill() {
  const s = load();
  inputs.system.value = typeof s.system === "string" ? s.system : "";
  for (const field of Object.keys(FIELDS)) {
    inputs[field].value = s[field] === undefined ? "" : String(s[field]);
    inputs[field].removeAttribute("aria-invalid");
  }
  const over = Object.keys(fromQuery);
  const note = $("settings-override");
  note.hidden = over.length === 0;
  note.textContent = over.length ? `The page address sets ${over.join(", ")}: ${over.length > 1 ? "those are" : "that is"} used instead.` : "";
  syncTheme();
}

form.addEventListener("input", (e) => {
  const field = e.target.name;
  const s = load();
  if (field === "system") {
    if (e.target.value.trim()) s.system = e.target.value; else delete s.system;
  } else if (field in FIELDS) {
    const text = e.target.value;
    const v = parse(field, text);
    const bad = e.target.validity.badInput || (text.trim() !== "" && v === null);
    if (bad) { e.target.setAttribute("aria-invalid", "true"); return; }  // keep the last valid value
    e.target.removeAttribute("aria-invalid");
    if (v === null) delete s[field]; else s[field] = v;
  } else if (field === "theme") {
    window.chatTheme.set(e.target.value);
    return;
  } else {
    return;
  }
  save(s);
});

$("settings-reset").addEventListener("click", () => {
  save({});
  window.chatTheme.set("system");
  fill();
});

export function openSettings() {
  fill();
  ui.settings.showModal();
}

// ---- the model's name: from every `session` frame, and from GET /v1/models before the first (which a
// server that requires an API key refuses)
let modelName = null;
export function setModelName(name) {
  if (typeof name !== "string" || !name) return;
  modelName = name;
  ui.modelName.textContent = name;
  $("settings-model").textContent = name;
}
fetch("/v1/models").then((r) => (r.ok ? r.json() : Promise.reject(r.status))).then((body) => {
  setModelName(body && Array.isArray(body.data) && body.data[0] ? body.data[0].id : null);
}).catch(() => {
  if (!modelName) $("settings-model").textContent = "not reported (this server asks for an API key to tell)";
});

// ---- theme: the toggle in the top bar and the choice in the panel
function syncTheme() {
  const dark = window.chatTheme.effective === "dark";
  ui.themeToggle.setAttribute("aria-pressed", String(dark));
  for (const radio of form.querySelectorAll('input[name="theme"]')) radio.checked = radio.value === window.chatTheme.choice;
}
/** Dark ↔ light, overriding the system's preference from now on. */
export function toggleTheme() { window.chatTheme.set(window.chatTheme.effective === "dark" ? "light" : "dark"); }
ui.themeToggle.addEventListener("click", toggleTheme);
document.addEventListener("chatthemechange", syncTheme);
syncTheme();
