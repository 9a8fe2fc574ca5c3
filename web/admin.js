// Operator page over the admin REST API (/api). The token stays in sessionStorage; all data is
// inserted with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("chatserver.admin") || "";
let cursor = null;

async function api(method, path) {
  const resp = await fetch(path, {method, headers: {Authorization: "Bearer " + token}});
  if (resp.status === 401 || resp.status === 403) {
    const body = await resp.json();
    showLogin(body.error.message);
    throw new Error(body.error.code);
  }
  if (resp.status === 204) return null;
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
  return body;
}

function mb(bytes) { return bytes ? (bytes / 1048576).toFixed(1) + " MB" : "–"; }
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function card(value, label) {
  const div = document.createElement("div");
  div.className = "card";
  const b = document.createElement("b"), span = document.createElement("span");
  b.textContent = value; span.textContent = label;
  div.append(b, span);
  return div;
}

async function loadStats() {
  const s = await api("GET", "/api/stats");
  const e = s.engine, kv = s.kv, looks = kv.hits_ram + kv.hits_disk + kv.misses;
  $("cards").replaceChildren(
    card(`${kv.ram.sessions} · ${mb(kv.ram.bytes)}`, `KV in RAM (max ${mb(kv.ram.max_bytes)})`),
    card(`${kv.disk.sessions} · ${mb(kv.disk.bytes)}`, `KV on disk (max ${mb(kv.disk.max_bytes)})`),
    card(looks ? Math.round(100 * (kv.hits_ram + kv.hits_disk) / looks) + "%" : "–", "cache hit rate"),
    card(`${kv.spills} / ${kv.restores}`, "spills / restores"),
    card(`${Math.round(e.ttft_ms.p50)} / ${Math.round(e.ttft_ms.p99)} ms`, "TTFT p50 / p99"),
    card(`${Math.round(e.itl_ms.p50)} / ${Math.round(e.itl_ms.p99)} ms`, "inter-token p50 / p99"),
    card(`${e.running} running · ${e.queue_depth} queued`, `${s.server.websockets} connections`),
  );
}

async function loadSessions(append) {
  const params = new URLSearchParams({limit: "50"});
  if ($("tier").value) params.set("tier", $("tier").value);
  if (append && cursor) params.set("cursor", cursor);
  const page = await api("GET", "/api/sessions?" + params);
  if (!append) $("rows").replaceChildren();
  for (const s of page.sessions) {
    const tr = document.createElement("tr");
    cell(tr, s.id.slice(0, 12) + "…").title = s.id;
    cell(tr, s.title || "(untitled)", "title");
    cell(tr, new Date(s.updated_at).toLocaleString());
    cell(tr, String(s.num_messages), "num");
    cell(tr, String(s.num_tokens), "num");
    const tier = document.createElement("span");
    tier.className = "tier " + s.kv.tier; tier.textContent = s.kv.tier;
    cell(tr, "").appendChild(tier);
    cell(tr, mb(s.kv.bytes), "num");
    const actions = cell(tr, "");
    for (const [label, method, path, cls] of [["Evict", "POST", `/api/sessions/${s.id}/evict`, ""],
        ["Drop KV", "POST", `/api/sessions/${s.id}/evict?drop=true`, ""],
        ["Delete", "DELETE", `/api/sessions/${s.id}`, "danger"]]) {
      const btn = document.createElement("button");
      btn.textContent = label; btn.className = cls;
      btn.onclick = async () => {
        if (method === "DELETE" && !confirm("Delete this session's transcript and KV?")) return;
        try { await api(method, path); } catch (err) { return; }
        refresh();
      };
      actions.appendChild(btn);
    }
    $("rows").appendChild(tr);
  }
  cursor = page.next_cursor;
  $("more").hidden = !cursor;
}

function showLogin(message) {
  $("main").hidden = true; $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function refresh() {
  if (!token) return showLogin("");
  $("login").hidden = true; $("main").hidden = false;
  try {
    await Promise.all([loadStats(), loadSessions(false)]);
  } catch (err) {
    if (!$("main").hidden) $("cards").replaceChildren(card("error", err.message));
  }
}

$("login").onsubmit = (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("chatserver.admin", token);
  refresh();
};
$("logout").onclick = () => { token = ""; sessionStorage.removeItem("chatserver.admin"); showLogin(""); };
$("refresh").onclick = refresh;
$("tier").onchange = () => loadSessions(false).catch(() => {});
$("more").onclick = () => loadSessions(true).catch(() => {});
refresh();
setInterval(() => { if (token && !$("main").hidden) loadStats().catch(() => {}); }, 5000);
