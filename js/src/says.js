import { h } from "./dom.js";

const SHOWN_CELLS = 4; // a circuit's cells past these are counted, and listed on hover

const DIRECTIONS = {
  denoise: "the clean run's values in the corrupted run",
  noise: "the corrupted run's values in the clean run",
};

// "head_out L3 H1 @13 and 2 more"
function cellsText(cells) {
  const shown = cells.slice(0, SHOWN_CELLS).join(", ");
  return cells.length > SHOWN_CELLS ? `${shown} and ${cells.length - SHOWN_CELLS} more` : shown;
}

// The sentence over the three lines: which cells took which run's values, for which pair.
export function saysSummary(says) {
  const cells = says.cells ?? [];
  const n = cells.length;
  const what = `${n === 1 ? "" : `${n} cells, `}${cellsText(cells)}`;
  const tokens = `${says.max_new_tokens} new token${says.max_new_tokens === 1 ? "" : "s"}`;
  if (says.alone) {
    // A circuit run on its own, as MIB's faithfulness runs it: the clean run, every other node corrupted.
    return `What the circuit says on its own (pair ${says.pair}, ${tokens}): the clean run with every node but ${what} given the corrupted run's value:`;
  }
  const how = DIRECTIONS[says.direction] ?? says.direction;
  return `What the model says (pair ${says.pair}, ${tokens}) when ${what} take${n === 1 ? "s" : ""} ${how}:`;
}

function line(kind, label, text) {
  return h("div", { class: `pw-says-line pw-says-${kind}` }, [
    h("span", { class: "pw-says-label" }, `${label}: `),
    h("span", { class: "pw-says-text" }, text),
  ]);
}

// says: view.says from Python, {cells, direction, pair, max_new_tokens, clean, corrupt, patched}.
export function renderSays(says) {
  return [
    h("p", { class: "pw-says-summary", title: (says.cells ?? []).join("\n") }, saysSummary(says)),
    line("clean", "clean", says.clean),
    line("corrupt", "corrupted", says.corrupt),
    line("patched", "patched", says.patched),
  ];
}

// One element for the widget's lifetime, a live region as the joint box is (joint.js).
export function createSaysBox() {
  return h("div", { class: "pw-says-live", role: "status" });
}

export function updateSaysBox(box, says) {
  box.classList.toggle("pw-says-result", Boolean(says));
  box.replaceChildren(...(says ? renderSays(says) : []));
}

// A "What does ... say?" button. Where pw.generate would refuse the request (refused: its message, from
// Python), the button does nothing and says why: marked aria-disabled rather than disabled, so that Tab still
// reaches it and reads the reason (its accessible description), which is also its tooltip and is written beside it.
export function saysButton(attrs, label, onSays, refused) {
  const button = h(
    "button",
    {
      type: "button",
      ...attrs,
      "aria-disabled": refused ? "true" : null,
      title: refused || attrs.title,
      "aria-description": refused || null,
      onclick: refused ? null : onSays,
    },
    label,
  );
  if (!refused) return button;
  return h("span", { class: "pw-says-unavailable" }, [button, h("span", { class: "pw-says-refused" }, refused)]);
}

// On a level that found a circuit (view.circuit_cells): ask what the model says with it patched (refused: why
// pw.generate would not run it, view.disabled.says).
export function renderSaysCircuit(nCells, onSays, refused = null) {
  if (!nCells) return null;
  const attrs = {
    class: "pw-says-circuit",
    "data-pw-key": "says-circuit",
    title: `widget.circuit's ${nCells} cells patched, in the circuit's own direction`,
  };
  return saysButton(attrs, "What does the circuit say?", onSays, refused);
}
