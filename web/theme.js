// Colour theme. A classic script in <head> (not a module) so that the first paint has the right colours.
// The page is dark when the person chose dark here, or chose nothing and the system prefers dark.
// Choice: localStorage "chatserver.theme" = "light" | "dark" (absent: follow the system).
// Result: <html data-theme="light|dark">, and a "chatthemechange" event on document when it changes.
// window.chatTheme: {choice, effective, set(choice)} for the page's modules (choice "system" forgets it).
(function () {
  const KEY = "chatserver.theme";
  const media = window.matchMedia("(prefers-color-scheme: dark)");
  const stored = () => {
    try { const v = localStorage.getItem(KEY); return v === "dark" || v === "light" ? v : null; } catch { return null; }
  };
  const effective = () => stored() || (media.matches ? "dark" : "light");
  function apply() {
    document.documentElement.dataset.theme = effective();
    document.dispatchEvent(new Event("chatthemechange"));
  }
  media.addEventListener("change", apply);
  window.addEventListener("storage", (e) => { if (e.key === KEY) apply(); });  // another tab chose
  window.chatTheme = {
    get choice() { return stored() || "system"; },
    get effective() { return effective(); },
    set(choice) {
      try {
        if (choice === "light" || choice === "dark") localStorage.setItem(KEY, choice);
        else localStorage.removeItem(KEY);
      } catch { /* storage disabled: this page only */ }
      apply();
    },
  };
  apply();
})();
