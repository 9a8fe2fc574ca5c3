// The page's elements and small DOM helpers shared by the modules. Text from the server or the person is
// only ever set with textContent (el's `text`); no string is parsed as HTML anywhere in web/.

export const $ = (id) => document.getElementById(id);

export const ui = {
  app: $("app"), sidebar: $("sidebar"), sessions: $("sessions"), noSessions: $("no-sessions"), noMatch: $("no-match"),
  newChat: $("new-chat"), search: $("search"), openSettings: $("open-settings"), modelName: $("model-name"),
  backdrop: $("backdrop"), menu: $("menu"), title: $("chat-title"), conn: $("conn"), connText: $("conn-text"),
  exportBtn: $("export"), exportMenu: $("export-menu"), themeToggle: $("theme-toggle"), openHelp: $("open-help"),
  banner: $("banner"), bannerText: $("banner-text"), retry: $("retry"), scroller: $("scroller"), empty: $("empty"),
  messages: $("messages"), composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  jump: $("jump"), announce: $("announce"), toast: $("toast"),
  settings: $("settings"), help: $("help"), helpKeys: $("help-keys"), confirm: $("confirm"),
};

/** A new element of `tag` with class `cls` and text `text` (both optional). */
export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A button with an SVG icon drawn from `paths` (path "d" strings, 24×24 box) and an accessible label. */
export function iconButton(cls, label, paths) {
  const button = el("button", cls);
  button.type = "button";
  button.setAttribute("aria-label", label);
  button.title = label;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("aria-hidden", "true");
  for (const d of paths) {
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", d);
    svg.appendChild(path);
  }
  button.appendChild(svg);
  return button;
}

export const ICONS = {
  copy: ["M9 9h10v11H9z", "M5 15V4h10"],
  check: ["M5 12l5 5 9-10"],
  edit: ["M4 20h4L19 9l-4-4L4 16z", "M13 7l4 4"],
  regenerate: ["M20 12a8 8 0 1 1-2.3-5.6", "M20 4v5h-5"],
  prev: ["M15 5l-7 7 7 7"],
  next: ["M9 5l7 7-7 7"],
  rename: ["M4 20h4L19 9l-4-4L4 16z"],
  trash: ["M4 7h16", "M9 7V4h6v3", "M6 7l1 13h10l1-13"],
};

/** Tell screen readers `text` (a polite live region). */
export function announce(text) { ui.announce.textContent = text; }

let toastTimer = 0;
/** A short message at the bottom of the page for `ms` milliseconds (also read by screen readers). */
export function toast(text, kind = "info", ms = 3500) {
  clearTimeout(toastTimer);
  ui.toast.textContent = text;
  ui.toast.dataset.kind = kind;
  ui.toast.hidden = false;
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, ms);
}

/** Put `text` on the clipboard: the async Clipboard API, else a hidden textarea and execCommand("copy")
 *  (pages over plain http on another host have no navigator.clipboard). Resolves true when copied. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch { /* denied: try the old way */ }
  const previous = document.activeElement;
  const area = el("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.focus();
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  area.remove();
  if (previous instanceof HTMLElement) previous.focus();
  return ok;
}

/** The platform's name of the command key: ⌘ on Apple devices, Ctrl elsewhere. */
export const MOD = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent) ? "⌘" : "Ctrl";
