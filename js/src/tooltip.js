import { h } from "./dom.js";

// One tooltip per widget, positioned inside the root (not position: fixed)
// because notebook front ends put transformed ancestors around outputs.
export function createTooltip(root) {
  const el = h("div", { class: "pw-tooltip", role: "tooltip", hidden: true });
  root.append(el);
  return {
    show(anchor, lines) {
      el.replaceChildren(...lines.map((line) => h("div", {}, line)));
      const a = anchor.getBoundingClientRect();
      const r = root.getBoundingClientRect();
      el.style.left = `${a.left - r.left + a.width / 2}px`;
      el.style.top = `${a.bottom - r.top + 4}px`;
      el.hidden = false;
    },
    hide() {
      el.hidden = true;
    },
  };
}
