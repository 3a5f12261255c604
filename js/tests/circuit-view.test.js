// @vitest-environment jsdom
import { describe, expect, it, vi } from "vitest";
import { panelScale } from "../src/colors.js";
import { renderControls } from "../src/controls.js";
import { renderGrid } from "../src/grid.js";
import { renderPanel } from "../src/panel.js";

// The circuit view as Python sends it (levels._circuit_panels): two layers, two heads.
const nodes = {
  id: "circuit",
  title: "Circuit of 3 nodes",
  kind: "nodes",
  row_dim: "layer",
  col_dim: "node",
  rows: ["L1", "L0", "embed"],
  cols: ["H0", "H1", "MLP"],
  values: [
    [-0.8, null, null],
    [null, null, -0.2],
    [-1, null, null],
  ],
  absent: [
    [false, false, false],
    [false, false, false],
    [false, true, true],
  ],
  opens: [
    [true, true, true],
    [true, true, true],
    [false, false, false],
  ],
  missing: "not in the circuit: corrupted when the circuit runs alone",
  clickable: true,
  diverging: true,
};
const curve = {
  id: "curve",
  title: "Faithfulness",
  kind: "curve",
  row_dim: "",
  col_dim: "circuit size",
  rows: ["faithfulness"],
  cols: ["10% (1 nodes)", "50% (2 nodes)", "100% (3 nodes)"],
  values: [[0, 0.7, 1]],
  x: [10, 50, 100],
  target: 0.9,
  clickable: false,
  diverging: true,
  note: "CPR 0.65: the area under this curve.",
};

function grid(panel) {
  const actions = { drill: vi.fn(), toggle: vi.fn(), focus: vi.fn(), back: vi.fn() };
  const tooltip = { show: vi.fn(), hide: vi.fn() };
  const opts = { scale: panelScale(panel, 1), focus: { row: 0, col: 0 }, selection: [], tooltip, actions };
  const el = renderGrid(panel, opts);
  document.body.replaceChildren(el);
  return { el, actions, tooltip, cell: (r, c) => el.querySelector(`.pw-cell[data-row="${r}"][data-col="${c}"]`) };
}

describe("the circuit view", () => {
  it("draws nodes: filled in the circuit, hollow outside, none where no node is", () => {
    const { el, cell } = grid(nodes);
    expect(el.querySelectorAll(".pw-node-in")).toHaveLength(3);
    expect(el.querySelectorAll(".pw-node-out")).toHaveLength(4);
    expect(el.querySelectorAll(".pw-absent")).toHaveLength(2);
    expect(cell(2, 1)).toBeNull(); // nothing to focus or click beside the embeddings
    expect(cell(0, 1).textContent).toBe(""); // no "NaN": a node, not a number
    expect(cell(0, 1).getAttribute("aria-label")).toContain("not in the circuit");
  });

  it("opens a node where it opens something, and says what an outside node is", () => {
    const { actions, tooltip, cell } = grid(nodes);
    cell(0, 1).click();
    expect(actions.drill).toHaveBeenCalledWith(0, 1);
    cell(2, 0).click(); // the embeddings open nothing narrower
    cell(2, 0).dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
    expect(actions.drill).toHaveBeenCalledTimes(1);
    expect(cell(2, 0).classList.contains("pw-clickable")).toBe(false);
    cell(1, 0).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show).toHaveBeenLastCalledWith(cell(1, 0), [
      "L0, 'H0'",
      "not in the circuit: corrupted when the circuit runs alone",
    ]);
  });

  it("draws MIB's curve as a line with the target marked and its note", () => {
    const section = renderPanel(curve, { vmax: 1, exact: true, tooltip: { show() {}, hide() {} }, actions: {} });
    const line = section.querySelector("polyline.pw-curve-line");
    expect(line.getAttribute("points").split(" ")).toHaveLength(3);
    expect(section.querySelector(".pw-curve-target").getAttribute("data-target")).toBe("0.9");
    expect([...section.querySelectorAll("circle title")].map((t) => t.textContent)).toEqual([
      "10% (1 nodes): 0",
      "50% (2 nodes): 0.7",
      "100% (3 nodes): 1",
    ]);
    expect(section.querySelector(".pw-legend")).toBeNull();
    expect(section.querySelectorAll(".pw-curve-grid").length).toBeGreaterThanOrEqual(3); // 0, 0.5 and 1 at least
    expect(section.querySelector(".pw-panel-note").textContent).toContain("CPR 0.65");
  });

  it("disables the menus the view ignores, saying why", () => {
    const controls = { direction: "denoise", directions: [{ value: "denoise", label: "denoise" }], n_pairs: 2 };
    const why = "A circuit always runs the clean prompts with every node outside it corrupted.";
    const el = document.createElement("div");
    el.append(
      ...renderControls(controls, { vmax: null, autoMax: 1, onSet() {}, onVmax() {}, disabled: { direction: why } }),
    );
    expect(el.querySelector(".pw-direction").disabled).toBe(true);
    expect(el.querySelector(".pw-direction").title).toBe(why);
    expect(el.querySelector(".pw-pair").disabled).toBe(false);
  });

  it("draws the bottleneck's trace as a table of numbers, not colours", () => {
    const trace = {
      id: "trace",
      title: "Each level",
      kind: "table",
      row_dim: "level",
      col_dim: "",
      rows: ["layers", "heads"],
      cols: ["candidates", "kept", "restore"],
      values: [
        [8, 4, 0.97],
        [14, 1, 1.03],
      ],
      clickable: false,
      diverging: false,
    };
    const section = renderPanel(trace, { vmax: 1, exact: true, tooltip: { show() {}, hide() {} }, actions: {} });
    expect(section.querySelector(".pw-legend")).toBeNull();
    expect([...section.querySelectorAll("tbody tr")].map((r) => r.textContent)).toEqual([
      "layers840.97",
      "heads1411.03",
    ]);
    expect(section.querySelector("td").getAttribute("style")).toBeNull();
  });
});
