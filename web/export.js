// Export the shown chat: Markdown (the branch on screen, readable) or JSON (every message of every branch
// with id and parent_id, and active_leaf_id: {"type":"export","tree":true}), from the server's `export`
// reply, downloaded through a Blob URL. The file is named after the chat's title.
import { toast, ui } from "./dom.js";
import { request } from "./remote.js";
import { setModelName } from "./settings.js";
import { state } from "./state.js";
import { findSession } from "./store.js";

const ROLE = { system: "System", user: "You", assistant: "Assistant" };

/** The session of an export reply as Markdown: a title, where it came from, then each message. */
export function toMarkdown(session, title) {
  const lines = [`# ${title}`, ""];
  const about = [session.model && `model ${session.model}`, session.created_at && `started ${session.created_at}`].filter(Boolean);
  lines.push(`*Exported from chatserver${about.length ? " · " + about.join(" · ") : ""}*`, "");
  for (const m of session.messages || []) {
    lines.push(`## ${ROLE[m.role] || m.role}`, "", m.content, "");
    if (m.role === "assistant" && m.finish_reason && m.finish_reason !== "stop") lines.push(`*(${m.finish_reason})*`, "");
  }
  return lines.join("\n");
}

const fileName = (title, ext) => (title.replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "").slice(0, 60) || "chat") + "." + ext;

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Export the shown chat as "md" or "json". */
export async function exportChat(format) {
  const target = state.current;
  const entry = target && findSession(target.session_id);
  if (!entry) { toast("There is nothing to export yet.", "error"); return; }
  let reply;
  try {
    reply = await request(entry, format === "json" ? { type: "export", tree: true } : { type: "export" }, (f) => f.type === "export");
  } catch (err) {
    toast(`Could not export the chat: ${err.message}`, "error", 6000);
    return;
  }
  const session = reply.session || {};
  setModelName(session.model);
  const title = session.title || entry.title || "Chat";
  if (format === "json") download(fileName(title, "json"), "application/json", JSON.stringify(session, null, 2) + "\n");
  else download(fileName(title, "md"), "text/markdown", toMarkdown(session, title));
  toast("Exported.");
}

// ---- the menu in the top bar
function closeMenu() {
  ui.exportMenu.hidden = true;
  ui.exportBtn.setAttribute("aria-expanded", "false");
}
ui.exportBtn.addEventListener("click", () => {
  const open = ui.exportMenu.hidden;
  ui.exportMenu.hidden = !open;
  ui.exportBtn.setAttribute("aria-expanded", String(open));
  if (open) ui.exportMenu.querySelector("button").focus();
});
ui.exportMenu.addEventListener("click", (e) => {
  const item = e.target.closest("button[data-format]");
  if (!item) return;
  closeMenu();
  exportChat(item.dataset.format);
});
ui.exportMenu.addEventListener("keydown", (e) => {
  const items = [...ui.exportMenu.querySelectorAll("button")];
  const i = items.indexOf(document.activeElement);
  if (e.key === "ArrowDown" || e.key === "ArrowUp") { e.preventDefault(); items[(i + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length].focus(); }
  else if (e.key === "Escape") { e.stopPropagation(); closeMenu(); ui.exportBtn.focus(); }
});
document.addEventListener("click", (e) => { if (!ui.exportMenu.hidden && !e.target.closest(".menu-wrap")) closeMenu(); });

/** Export is possible when the shown chat is in the list (it has had a first message). */
export function updateExport() {
  ui.exportBtn.disabled = !(state.current && findSession(state.current.session_id));
  if (ui.exportBtn.disabled) closeMenu();
}
