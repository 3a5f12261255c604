import { h } from "./dom.js";
import { saysButton } from "./says.js";

function sameCell(a, b) {
  return a.panel === b.panel && a.row === b.row && a.col === b.col;
}

export function isSelected(selection, cell) {
  return selection.some((s) => sameCell(s, cell));
}

export function toggleCell(selection, cell) {
  return isSelected(selection, cell) ? selection.filter((s) => !sameCell(s, cell)) : [...selection, cell];
}

// Why pw.generate would refuse "What does it say?" for the selected cells, as Python says it: for every cell
// (view.disabled.says: a noise() corruption has no corrupted prompt), else for a selected cell's panel
// (panel.says_refused: the attention pattern); null where it would run.
export function saysRefusal(view, selection) {
  if (view?.disabled?.says) return view.disabled.says;
  const panels = view?.panels ?? [];
  for (const cell of selection) {
    const why = panels.find((p) => p.id === cell.panel)?.says_refused;
    if (why) return why;
  }
  return null;
}

// saysRefused: saysRefusal's reason, drawn on the button instead of sending what Python would refuse.
export function renderSelectionBar(selection, { onJoint, onKeep, onSays, onClear, saysRefused = null }) {
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
    saysButton({ class: "pw-says", "data-pw-key": "says" }, "What does it say?", onSays, saysRefused),
    h("button", { type: "button", class: "pw-clear-selection", "data-pw-key": "clear", onclick: onClear }, "Clear"),
  ]);
}
