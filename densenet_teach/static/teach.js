// densenet-teach: theme, code size, line wrap, the oracle panels and the framework tabs.
// The page works without this file: four columns on a wide screen, PyTorch on a narrow one.
(function () {
  "use strict";
  const root = document.documentElement;
  const body = document.body;
  const store = (key, value) => { try { localStorage.setItem(key, value); } catch (e) {} };
  const recall = (key) => { try { return localStorage.getItem(key); } catch (e) { return null; } };
  const on = (id, fn) => { const el = document.getElementById(id); if (el) el.addEventListener("click", fn); };

  const dark = () => root.dataset.theme === "dark" ||
    (!root.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
  on("theme", () => {
    root.dataset.theme = dark() ? "light" : "dark";
    store("teach-theme", root.dataset.theme);
  });

  const size = () => parseFloat(getComputedStyle(root).getPropertyValue("--code-size")) || 12.5;
  const resize = (step) => {
    const px = Math.min(28, Math.max(8, size() + step));
    root.style.setProperty("--code-size", px + "px");
    store("teach-size", String(px));
  };
  on("smaller", () => resize(-1));
  on("larger", () => resize(1));

  const toggle = (id, apply) => on(id, (e) => {
    const pressed = e.currentTarget.getAttribute("aria-pressed") !== "true";
    e.currentTarget.setAttribute("aria-pressed", String(pressed));
    apply(pressed);
  });
  toggle("wrap", (w) => body.classList.toggle("wrap", w));
  toggle("oracles", (open) => document.querySelectorAll("details.oracle").forEach((d) => { d.open = open; }));

  // Tabs: one framework for every block at once (a reader switches frameworks, not blocks).
  const select = (fw) => {
    body.dataset.fw = fw;
    document.querySelectorAll(".tabs button").forEach((b) => {
      b.setAttribute("aria-selected", String(b.dataset.fw === fw));
    });
  };
  document.querySelectorAll(".tabs button").forEach((b) => {
    b.addEventListener("click", () => { select(b.dataset.fw); store("teach-fw", b.dataset.fw); });
  });
  const wanted = new URLSearchParams(location.search).get("fw") || recall("teach-fw");
  select(document.querySelector(`.tabs button[data-fw="${wanted}"]`) ? wanted : body.dataset.fw);

  // A permalink to an oracle panel's block opens it; printing keeps what is open.
  if (location.hash) {
    const target = document.getElementById(location.hash.slice(1));
    if (target && target.closest("details")) target.closest("details").open = true;
  }
})();

// What the reader sees, for the browser test: four columns side by side, or one tab.
(function () {
  const panels = document.querySelectorAll(".columns > article.panel");
  const shown = Array.from(panels).slice(0, 4).filter((p) => p.offsetParent !== null);
  const side = shown.length > 1 && shown.every((p) => p.offsetTop === shown[0].offsetTop);
  document.body.dataset.layout = side ? "columns" : shown.length === 1 ? "tabs" : "other";
})();
