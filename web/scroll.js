// Following a growing answer: the view stays at the bottom while the answer streams unless the person
// scrolls up (then a "Jump to latest" button appears); scrolling back to the bottom resumes following.
import { ui } from "./dom.js";

let stick = true, lastTop = 0;
const nearBottom = () => ui.scroller.scrollHeight - ui.scroller.scrollTop - ui.scroller.clientHeight < 40;

/** Follow the bottom from now on (a new message, a new transcript). */
export function stickToBottom() { stick = true; followBottom(); }

/** Content grew: keep the bottom in view if following. */
export function followBottom() {
  if (stick) ui.scroller.scrollTop = ui.scroller.scrollHeight;
  lastTop = ui.scroller.scrollTop;
  updateJump();
}

/** Scroll so that `node` is `offset` px below the scroller's top, and stop following. */
export function keepAt(node, offset) {
  stick = false;
  ui.scroller.scrollTop += node.getBoundingClientRect().top - ui.scroller.getBoundingClientRect().top - offset;
  lastTop = ui.scroller.scrollTop;
  if (nearBottom()) stick = true;
  updateJump();
}

export function updateJump() { ui.jump.hidden = stick || nearBottom(); }

ui.scroller.addEventListener("scroll", () => {
  const top = ui.scroller.scrollTop;
  if (nearBottom()) stick = true;
  else if (top < lastTop - 2) stick = false;  // content growth never lowers scrollTop: the person scrolled up
  lastTop = top;
  updateJump();
}, { passive: true });
ui.jump.addEventListener("click", stickToBottom);
