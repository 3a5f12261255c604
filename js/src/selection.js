import { h } from "./dom.js";

function sameCell(a, b) {
  return a.panel === b.panel && a.row === b.row && a.col === b.col;
}

export function isSelected(selection, cell) {
  return selection.some((s) => sameCell(s, cell));
}

export function toggleCell(selection, cell) {
  return isSelected(selection, cell) ? selection.filter((s) => !sameCell(s, cell)) : [...selection, cell];
}

export function renderSelectionBar(selection, { onJoint, onKeep, onSays, onClear }) {
  if (selection.length === 0) return null;
  const count = `${selection.length} cell${selection.length === 1 ? "" : "s"} selected`;
  return h("div", { class: "pw-selection", role: "group", "aria-label": "Selection" }, [
    h("span", { class: "pw-selection-count" }, count),
    h(
      "button",
      { type: "button", class: "pw-joint", "data-pw-key": "joint", onclick: onJoint },
      "Patch selected together",
    ),
    h("button", { type: "button", class: "pw-keep", "data-pw-key": "keep", onclick: onKeep }, "Keep as circuit"),
    h("button", { type: "button", class: "pw-says", "data-pw-key": "says", onclick: onSays }, "What does it say?"),
    h("button", { type: "button", class: "pw-clear-selection", "data-pw-key": "clear", onclick: onClear }, "Clear"),
  ]);
}
