import { h } from "./dom.js";

// The last item is the current level; it is marked rather than clickable.
export function renderBreadcrumb(items, onBack) {
  const current = items.length - 1;
  return h(
    "nav",
    { class: "pw-breadcrumb", "aria-label": "Drill-down path" },
    h(
      "ol",
      {},
      items.map((item, level) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: "pw-crumb",
              "data-level": level,
              "data-pw-key": `crumb:${level}`,
              "aria-current": level === current ? "page" : null,
              onclick: level === current ? null : () => onBack(level),
            },
            item.label,
          ),
        ),
      ),
    ),
  );
}
