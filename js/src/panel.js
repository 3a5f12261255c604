import { panelScale } from "./colors.js";
import { panelHasFlips } from "./consistency.js";
import { renderCurve } from "./curve.js";
import { h } from "./dom.js";
import { followLayout, renderEdges } from "./edges.js";
import { renderDownloads } from "./export.js";
import { formatExact } from "./format.js";
import { renderGrid } from "./grid.js";
import { renderLegend } from "./legend.js";

// A remembered focus may point outside a panel that has since shrunk.
function clampFocus(focus, panel) {
  return {
    row: Math.min(focus?.row ?? 0, panel.rows.length - 1),
    col: Math.min(focus?.col ?? 0, panel.cols.length - 1),
  };
}

function estimateBadge() {
  return h(
    "span",
    {
      class: "pw-estimate",
      title: "Attribution-patching estimate; exact values replace it when computed",
    },
    "estimate",
  );
}

// Explains the corner mark on cells; CSS draws the same triangle before it.
function flipKey() {
  return h("span", { class: "pw-flip-key" }, "sign flips across pairs");
}

// The grid, with a circuit's edges drawn over it where an edges panel names it (opts.edges).
function gridBody(panel, gridOpts) {
  const grid = renderGrid(panel, gridOpts);
  const { edges, tooltip, scale } = gridOpts;
  if (!edges) return grid;
  grid.classList.add("pw-grid-edges");
  const layer = renderEdges(edges.panel, { scale, focus: edges.focus, tooltip, actions: edges.actions });
  const diagram = h("div", { class: "pw-diagram" }, [grid, layer]);
  followLayout(diagram, layer);
  return diagram;
}

// opts: vmax (validated, null = auto), exact, focus, selection, nPairs, tooltip, actions; edges {panel, focus,
// actions}: a circuit's edges panel to draw over this one (its kind "edges", its `on` this panel's id).
export function renderPanel(panel, opts) {
  const header = h("div", { class: "pw-panel-header" }, [
    h("span", { class: "pw-panel-title" }, panel.title),
    opts.exact ? null : estimateBadge(),
    panelHasFlips(panel) ? flipKey() : null,
  ]);
  const note = panel.note ? h("p", { class: "pw-panel-note" }, panel.note) : null;
  const classes = `pw-panel${opts.exact ? "" : " pw-panel-estimate"}`;
  if (panel.kind === "table") {
    return h("section", { class: `${classes} pw-panel-table`, "data-panel": panel.id }, [
      header,
      renderTable(panel),
      note,
    ]);
  }
  if (panel.kind === "curve") {
    return h("section", { class: `${classes} pw-panel-curve`, "data-panel": panel.id }, [
      header,
      renderCurve(panel),
      note,
    ]);
  }
  const scale = panelScale(panel, opts.vmax);
  const gridOpts = { ...opts, scale, focus: clampFocus(opts.focus, panel) };
  header.append(renderDownloads(panel, scale, opts.edges?.panel));
  const edgesNote = opts.edges?.panel.note
    ? h("p", { class: "pw-panel-note pw-edges-note" }, opts.edges.panel.note)
    : null;
  return h("section", { class: classes, "data-panel": panel.id }, [
    header,
    renderLegend(scale),
    h("div", { class: "pw-grid-scroll" }, gridBody(panel, gridOpts)),
    note,
    edgesNote,
  ]);
}

// A table of numbers to read (the bottleneck search's trace: counts beside a share), without colours.
function renderTable(panel) {
  const head = h("tr", {}, [
    h("th", { scope: "col" }, panel.row_dim),
    ...panel.cols.map((c) => h("th", { scope: "col" }, c)),
  ]);
  const rows = panel.rows.map((label, r) =>
    h("tr", {}, [
      h("th", { scope: "row" }, label),
      ...panel.values[r].map((v) => h("td", {}, v === null ? "–" : formatExact(v))),
    ]),
  );
  return h("table", { class: "pw-table" }, [h("thead", {}, head), h("tbody", {}, rows)]);
}
