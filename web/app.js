// Minimal client of docs/PROTOCOL.md. Model output is only ever inserted as text, never as HTML.
"use strict";
const log = document.getElementById("log"), input = document.getElementById("input");
const statusEl = document.getElementById("status"), stopBtn = document.getElementById("stop");
const saved = JSON.parse(localStorage.getItem("chatserver.session") || "null");
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
let answer = null;

function add(cls, text) {
  const div = document.createElement("div");
  div.className = "msg " + cls;
  div.textContent = text;
  log.appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

ws.onopen = () => ws.send(JSON.stringify(saved ? {type: "hello", ...saved} : {type: "hello"}));
ws.onclose = () => { statusEl.textContent = "disconnected"; };
ws.onmessage = (ev) => {
  const f = JSON.parse(ev.data);
  if (f.type === "session") {
    localStorage.setItem("chatserver.session", JSON.stringify({session_id: f.session_id, resume_token: f.resume_token}));
    statusEl.textContent = "session " + f.session_id;
    for (const m of f.messages) if (m.role !== "system") add(m.role, m.content);
  } else if (f.type === "token") {
    answer.textContent += f.text;
    answer.scrollIntoView({block: "end"});
  } else if (f.type === "done") {
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${f.usage.cached_tokens}/${f.usage.prompt_tokens} prompt tokens from cache · first token ${Math.round(f.timings.ttft_ms)} ms`;
    answer.after(meta);
    answer = null; stopBtn.disabled = true;
  } else if (f.type === "error") {
    if (f.code === "session_not_found" || f.code === "unauthorized") {
      localStorage.removeItem("chatserver.session");
      ws.send(JSON.stringify({type: "hello"}));
    } else { add("error", f.code + ": " + f.message); answer = null; stopBtn.disabled = true; }
  }
};

function send() {
  const text = input.value;
  if (!text.trim() || answer) return;
  add("user", text);
  answer = add("assistant", "");
  ws.send(JSON.stringify({type: "user", content: text}));
  input.value = ""; stopBtn.disabled = false;
}
document.getElementById("form").onsubmit = (e) => { e.preventDefault(); send(); };
input.onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
stopBtn.onclick = () => ws.send(JSON.stringify({type: "cancel"}));
