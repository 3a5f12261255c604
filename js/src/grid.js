import { cellColors, isMissing } from "./colors.js";
import { cellFlips, consistencyNotes } from "./consistency.js";
import { h } from "./dom.js";
import { formatExact, formatValue } from "./format.js";
import { keyAction } from "./keyboard.js";
import { isSelected } from "./selection.js";

// A panel drawn as a diagram of nodes ("nodes": the circuit view) rather than a grid of numbers.
const isNodes = (panel) => panel.kind === "nodes";

// Whether a click on (row, col) opens a narrower level: the panel says so, per cell for node diagrams.
export function opensAt(panel, row, col) {
  return Boolean(panel.clickable) && (panel.opens?.[row]?.[col] ?? true);
}

// A node of the circuit that has no value of its own (a circuit of edges: the nodes its edges join).
const isKept = (panel, row, col) => Boolean(panel.kept?.[row]?.[col]);

// A cell's value in words: the number, or what having none means here (a node the circuit's edges join, a node
// outside the circuit).
function valueText(panel, row, col, format) {
  const value = panel.values[row][col];
  if (isMissing(value) && isKept(panel, row, col) && panel.kept_note) return panel.kept_note;
  return isMissing(value) && panel.missing ? panel.missing : format(value);
}

// Where a cell is, in words: its row and column; a diagram's node alone in its row (the embeddings, the logits)
// by its row only.
function placeText(panel, row, col) {
  const alone = isNodes(panel) && panel.absent?.[row]?.some(Boolean);
  return alone ? panel.rows[row] : `${panel.rows[row]}, '${panel.cols[col]}'`;
}

// nPairs (controls.n_pairs) only words the spread and flips of mean views.
export function cellLabel(panel, row, col, nPairs) {
  const value = valueText(panel, row, col, (v) => formatValue(v, 3));
  const label = `${placeText(panel, row, col)}, ${panel.title}: ${value}`;
  return [label, ...consistencyNotes(panel, row, col, nPairs)].join(", ");
}

// The panel's title is not repeated here: it is above the grid, and long titles made tooltips too wide.
function tooltipLines(panel, row, col, nPairs) {
  const value = valueText(panel, row, col, (v) => `value: ${formatExact(v)}`);
  const closed = panel.clickable && panel.closed && !opensAt(panel, row, col) ? [`opens nothing: ${panel.closed}`] : [];
  const same =
    col < (panel.same_before ?? 0)
      ? [
          `0 by causality: before '${panel.cols[panel.same_before]}', the first token the corruption changes, the clean and corrupted runs are the same`,
        ]
      : [];
  return [placeText(panel, row, col), value, ...same, ...consistencyNotes(panel, row, col, nPairs), ...closed];
}

function cellContent(panel, value, colors, scale, kept) {
  if (!isNodes(panel)) return formatValue(value, 2, Math.abs(scale.domain().at(-1)));
  const fill = colors ? `background-color: ${colors.background}` : null;
  const state = colors ? "pw-node-in" : kept ? "pw-node-in pw-node-kept" : "pw-node-out";
  return h("span", { class: `pw-node ${state}`, style: fill, "aria-hidden": "true" });
}

function renderCell(panel, row, col, { scale, focus, selection, nPairs }) {
  if (panel.absent?.[row]?.[col]) return h("td", { role: "none", class: "pw-absent" });
  const value = panel.values[row][col];
  const colors = cellColors(scale, value);
  const selected = isSelected(selection, { panel: panel.id, row, col });
  const classes = [
    "pw-cell",
    isNodes(panel) && "pw-node-cell",
    opensAt(panel, row, col) && "pw-clickable",
    selected && "pw-selected",
    isMissing(value) && "pw-nan",
    cellFlips(panel, row, col) > 0 && "pw-flip",
    panel.mark_cell?.[0] === row && panel.mark_cell?.[1] === col && "pw-marked-cell",
  ];
  return h(
    "td",
    {
      role: "gridcell",
      class: classes.filter(Boolean).join(" "),
      "data-row": row,
      "data-col": col,
      "data-pw-key": `cell:${panel.id}:${row}:${col}`,
      tabindex: row === focus.row && col === focus.col ? 0 : -1,
      "aria-label": cellLabel(panel, row, col, nPairs),
      "aria-selected": String(selected),
      style: colors && !isNodes(panel) && `background-color: ${colors.background}; color: ${colors.color}`,
    },
    cellContent(panel, value, colors, scale, isKept(panel, row, col)),
  );
}

function headerRow(panel) {
  const corner = h(
    "td",
    { role: "none", class: "pw-corner", "aria-hidden": "true" },
    panel.col_dim ? `${panel.row_dim} \\ ${panel.col_dim}` : panel.row_dim,
  );
  // The column of the token this level was opened at is marked (levels.py: mark_col).
  const heads = panel.cols.map((label, col) =>
    h(
      "th",
      { role: "columnheader", scope: "col", class: col === panel.mark_col ? "pw-marked" : null },
      h("span", {}, label),
    ),
  );
  return h("thead", {}, h("tr", { role: "row" }, [corner, ...heads]));
}

function bodyRows(panel, opts) {
  return h(
    "tbody",
    {},
    panel.rows.map((label, row) =>
      h("tr", { role: "row" }, [
        h("th", { role: "rowheader", scope: "row" }, label),
        ...panel.cols.map((_, col) => renderCell(panel, row, col, opts)),
      ]),
    ),
  );
}

function cellAt(grid, row, col) {
  return grid.querySelector(`.pw-cell[data-row="${row}"][data-col="${col}"]`);
}

function coords(cell) {
  return { row: Number(cell.dataset.row), col: Number(cell.dataset.col) };
}

// Roving tabindex: exactly one cell per grid is in the tab order, so Tab
// moves between panels rather than through every cell.
function makeRoving(grid, cell) {
  for (const c of grid.querySelectorAll('.pw-cell[tabindex="0"]')) c.tabIndex = -1;
  cell.tabIndex = 0;
}

function applyKey(grid, panel, action, actions) {
  switch (action.type) {
    case "focus":
      cellAt(grid, action.row, action.col)?.focus();
      return true;
    case "drill":
      if (opensAt(panel, action.row, action.col)) actions.drill(action.row, action.col);
      return true;
    case "toggle":
      actions.toggle(action.row, action.col);
      return true;
    case "back":
      return actions.back();
  }
}

// Modified keys are not grid commands and keep their browser meaning; only
// keys the grid acts on are kept from the notebook (which listens on bubbling
// keydown in JupyterLab).
function onKeydown(grid, panel, actions, event) {
  const cell = event.target.closest(".pw-cell");
  if (!cell || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
  const { row, col } = coords(cell);
  const action = keyAction(row, col, event.key, panel.rows.length, panel.cols.length);
  if (action && applyKey(grid, panel, action, actions)) {
    event.preventDefault();
    event.stopPropagation();
  }
}

function onClick(panel, actions, event) {
  const cell = event.target.closest(".pw-cell");
  if (!cell) return;
  const { row, col } = coords(cell);
  if (event.shiftKey) actions.toggle(row, col);
  else if (opensAt(panel, row, col)) actions.drill(row, col);
}

// Over a cell: its tooltip; over anything else in the grid (headers, borders): none.
function showTip(panel, { tooltip, nPairs }, event) {
  const cell = event.target.closest(".pw-cell");
  if (!cell) {
    tooltip.hide();
    return;
  }
  const { row, col } = coords(cell);
  tooltip.show(cell, tooltipLines(panel, row, col, nPairs));
}

// Focus the widget moved itself (dom.quietFocus, after a drill) shows no tooltip: only the user's.
function onFocusin(grid, panel, opts, event) {
  const cell = event.target.closest(".pw-cell");
  if (!cell) return;
  makeRoving(grid, cell);
  const { row, col } = coords(cell);
  opts.actions.focus(row, col);
  if (cell.dataset.pwQuiet === undefined) showTip(panel, opts, event);
}

// opts: scale (from colors.panelScale), focus {row, col}, selection (cells of
// this panel), nPairs (controls.n_pairs), tooltip (tooltip.js), actions
// {drill, toggle, back, focus}; actions.back returns whether it acted, so
// Escape can fall through to the notebook at the top level.
export function renderGrid(panel, opts) {
  const { actions, tooltip } = opts;
  const grid = h(
    "table",
    {
      role: "grid",
      class: "pw-grid",
      "aria-label": panel.title,
      "aria-multiselectable": "true",
      "data-panel": panel.id,
    },
    [headerRow(panel), bodyRows(panel, opts)],
  );
  grid.addEventListener("keydown", (e) => onKeydown(grid, panel, actions, e));
  grid.addEventListener("click", (e) => onClick(panel, actions, e));
  grid.addEventListener("focusin", (e) => onFocusin(grid, panel, opts, e));
  grid.addEventListener("mouseover", (e) => showTip(panel, opts, e));
  grid.addEventListener("mouseleave", () => tooltip.hide());
  grid.addEventListener("focusout", () => tooltip.hide());
  return grid;
}
