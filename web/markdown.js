// A small, safe markdown renderer for model output.
//
// Safety: the output is built only with document.createElement and text nodes. No string is
// ever parsed as HTML (no innerHTML, insertAdjacentHTML, outerHTML or document.write), no
// attribute is set from model text except a sanitized language name, and no links are made.
// A "<script>" in the answer is therefore just eight characters of text.
//
// Supported: paragraphs (single newlines kept), # headings, bullet and numbered lists (nested by
// indentation), > quotes, --- rules, fenced code blocks (``` or ~~~, an unterminated fence runs to
// the end so streaming code renders as code), `inline code`, **bold**, __bold__, *italic*, _italic_.

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(?:\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)|(?<![\w_])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w_])/g;

const el = (tag, cls) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
};
const isBlank = (line) => line.trim() === "";
const indentOf = (line) => line.match(/^\s*/)[0].replace(/\t/g, "    ").length;
const startsBlock = (line) => FENCE.test(line) || HEADING.test(line) || RULE.test(line) || ITEM.test(line) || QUOTE.test(line);

/** Render `text` as markdown into a new DocumentFragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  renderBlocks(frag, String(text).replace(/\r\n?/g, "\n").split("\n"));
  return frag;
}

function renderBlocks(parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (isBlank(line)) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      i = codeBlock(parent, lines, i, m);
    } else if ((m = HEADING.exec(line))) {
      const h = el("h" + Math.min(6, m[1].length + 2));  // # -> h3: answers sit inside a page
      inline(h, m[2]);
      parent.appendChild(h);
      i++;
    } else if (RULE.test(line)) {
      parent.appendChild(el("hr"));
      i++;
    } else if (ITEM.test(line)) {
      i = list(parent, lines, i);
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { quoted.push(m[1]); i++; }
      const q = el("blockquote");
      renderBlocks(q, quoted);
      parent.appendChild(q);
    } else {
      const para = [line.trim()];
      i++;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) para.push(lines[i++].trim());
      const p = el("p");
      inline(p, para.join("\n"));
      parent.appendChild(p);
    }
  }
}

function codeBlock(parent, lines, i, open) {
  const marker = open[1];
  const body = [];
  i++;
  while (i < lines.length && !(lines[i].trim().startsWith(marker) && lines[i].trim().replace(/[`~]/g, "") === "")) {
    body.push(lines[i++]);
  }
  const closed = i < lines.length;
  const wrap = el("div", "code");
  const lang = open[2].replace(/[^\w+#.-]/g, "").slice(0, 20);
  const bar = el("div", "code-bar");
  const label = el("span");
  label.textContent = lang || "code";
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", "Copy code");
  bar.append(label, copy);
  const pre = el("pre");
  const code = el("code");
  code.textContent = body.join("\n");
  pre.appendChild(code);
  wrap.append(bar, pre);
  parent.appendChild(wrap);
  return closed ? i + 1 : i;
}

function list(parent, lines, i) {
  const first = ITEM.exec(lines[i]);
  const indent = indentOf(first[1]);
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || indentOf(m[1]) !== indent || /\d/.test(m[2]) !== ordered) break;
    const li = el("li");
    const text = [m[3]];
    i++;
    while (i < lines.length) {
      const line = lines[i];
      const sub = ITEM.exec(line);
      if (sub && indentOf(sub[1]) > indent) {
        flushItemText(li, text);
        i = list(li, lines, i);
        continue;
      }
      if (isBlank(line)) {
        // a blank line continues the list only if more of it follows
        let j = i + 1;
        while (j < lines.length && isBlank(lines[j])) j++;
        const next = j < lines.length ? ITEM.exec(lines[j]) : null;
        if (next && indentOf(next[1]) >= indent && (indentOf(next[1]) > indent || /\d/.test(next[2]) === ordered)) { i = j; continue; }
        if (j < lines.length && !next && indentOf(lines[j]) > indent && !FENCE.test(lines[j])) { text.push(""); i = j; continue; }
        break;
      }
      if (sub || startsBlock(line)) break;
      text.push(line.trim());
      i++;
    }
    flushItemText(li, text);
    node.appendChild(li);
  }
  parent.appendChild(node);
  return i;
}

function flushItemText(li, text) {
  const joined = text.join("\n").trim();
  text.length = 0;
  if (!joined) return;
  const span = el("span");
  inline(span, joined);
  li.appendChild(span);
}

/** Inline markdown into `parent` with text nodes and <code>/<strong>/<em> elements only. */
function inline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
    if (m[1] !== undefined) {
      const code = el("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.appendChild(code);
    } else {
      const node = el(m[3] !== undefined || m[4] !== undefined ? "strong" : "em");
      inline(node, m[3] ?? m[4] ?? m[5] ?? m[6]);
      parent.appendChild(node);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}
