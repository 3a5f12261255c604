// @vitest-environment jsdom
import { describe, expect, it, vi } from "vitest";
import { panelScale } from "../src/colors.js";
import { renderGrid } from "../src/grid.js";
import { panel4x5 } from "./fake-model.js";

function setup(panelOverrides = {}, backResult = true, nPairs = undefined) {
  const panel = panel4x5(panelOverrides);
  const actions = { drill: vi.fn(), toggle: vi.fn(), focus: vi.fn(), back: vi.fn(() => backResult) };
  const tooltip = { show: vi.fn(), hide: vi.fn() };
  const opts = { scale: panelScale(panel, null), focus: { row: 0, col: 0 }, selection: [], nPairs, tooltip, actions };
  const grid = renderGrid(panel, opts);
  document.body.replaceChildren(grid);
  const cell = (r, c) => grid.querySelector(`[data-row="${r}"][data-col="${c}"]`);
  return { panel, actions, tooltip, grid, cell };
}

function key(target, name, init = {}) {
  const event = new KeyboardEvent("keydown", { key: name, bubbles: true, cancelable: true, ...init });
  target.dispatchEvent(event);
  return event;
}

describe("renderGrid", () => {
  it("renders a 4x5 ARIA grid with labelled cells", () => {
    const { grid } = setup();
    expect(grid.getAttribute("role")).toBe("grid");
    expect(grid.classList.contains("pw-grid")).toBe(true);
    expect(grid.getAttribute("aria-label")).toBe("resid_pre");
    const cells = grid.querySelectorAll('[role="gridcell"]');
    expect(cells).toHaveLength(20);
    expect([...cells].every((c) => c.classList.contains("pw-cell"))).toBe(true);
    expect(grid.querySelectorAll('[role="row"]')).toHaveLength(5);
    expect(grid.querySelectorAll('[role="rowheader"]')).toHaveLength(4);
    const heads = [...grid.querySelectorAll('[role="columnheader"]')].map((c) => c.textContent);
    expect(heads).toEqual(["When", "Mary (1)", "and", "John", "Mary (2)"]);
  });

  it("labels cells with row, column, title and value", () => {
    const { cell } = setup();
    expect(cell(3, 0).getAttribute("aria-label")).toBe("L3, 'When', resid_pre: 0.734");
    expect(cell(3, 1).getAttribute("aria-label")).toBe("L3, 'Mary (1)', resid_pre: -0.500");
    expect(cell(0, 3).getAttribute("aria-label")).toBe("L0, 'John', resid_pre: NaN");
    expect(cell(0, 3).classList.contains("pw-nan")).toBe(true);
    expect(cell(0, 3).textContent).toBe("NaN");
    expect(cell(1, 1).style.backgroundColor).not.toBe("");
  });

  it("puts exactly one cell in the tab order", () => {
    const { grid, cell } = setup();
    expect(grid.querySelectorAll('[tabindex="0"]')).toHaveLength(1);
    expect(cell(0, 0).tabIndex).toBe(0);
    expect(cell(2, 2).tabIndex).toBe(-1);
  });

  it("drills on click and toggles on shift-click", () => {
    const { actions, cell } = setup();
    cell(2, 3).click();
    expect(actions.drill).toHaveBeenCalledWith(2, 3);
    cell(1, 4).dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true }));
    expect(actions.toggle).toHaveBeenCalledWith(1, 4);
    expect(actions.drill).toHaveBeenCalledTimes(1);
  });

  it("does not drill into a non-clickable panel", () => {
    const { actions, cell } = setup({ clickable: false });
    cell(1, 1).click();
    key(cell(1, 1), "Enter");
    expect(actions.drill).not.toHaveBeenCalled();
  });

  it("moves the roving focus with arrow keys", () => {
    const { grid, cell, actions, tooltip } = setup();
    cell(0, 0).focus();
    const event = key(cell(0, 0), "ArrowRight");
    expect(event.defaultPrevented).toBe(true);
    expect(document.activeElement).toBe(cell(0, 1));
    key(cell(0, 1), "ArrowDown");
    expect(document.activeElement).toBe(cell(1, 1));
    expect(grid.querySelectorAll('[tabindex="0"]')).toHaveLength(1);
    expect(cell(1, 1).tabIndex).toBe(0);
    expect(actions.focus).toHaveBeenLastCalledWith(1, 1);
    expect(tooltip.show).toHaveBeenLastCalledWith(cell(1, 1), ["L1, 'Mary (1)'", "value: 1"]);
  });

  it("drills on Enter and lets Escape through when there is no level to go back to", () => {
    const { cell, actions } = setup({}, false);
    key(cell(3, 2), "Enter");
    expect(actions.drill).toHaveBeenCalledWith(3, 2);
    const escapeEvent = key(cell(3, 2), "Escape");
    expect(actions.back).toHaveBeenCalled();
    expect(escapeEvent.defaultPrevented).toBe(false);
  });

  it("leaves modified keys to the notebook", () => {
    const { cell, actions } = setup();
    const event = key(cell(0, 0), "Enter", { shiftKey: true });
    expect(event.defaultPrevented).toBe(false);
    expect(actions.drill).not.toHaveBeenCalled();
  });

  it("shows the exact value on hover", () => {
    const { cell, tooltip } = setup();
    cell(3, 0).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show).toHaveBeenCalledWith(cell(3, 0), ["L3, 'When'", "value: 0.734"]);
  });
});

// The mean over 8 pairs: cell (3, 0) is consistent, (1, 2) flips in 2 pairs.
const spreadAndFlips = () => ({
  spread: [
    [0.1, 0.1, 0.1, null, 0.1],
    [0.1, 0.1, 0.4567, 0.1, 0.1],
    [0.1, 0.1, 0.1, 0.1, 0.1],
    [0.0812, 0.1, 0.1, 0.1, 0.1],
  ],
  flips: [
    [0, 0, 0, 0, 0],
    [0, 0, 2, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
  ],
});

describe("renderGrid with consistency across pairs", () => {
  it("appends the spread and sign flips to the aria-label", () => {
    const { cell } = setup(spreadAndFlips(), true, 8);
    expect(cell(3, 0).getAttribute("aria-label")).toBe("L3, 'When', resid_pre: 0.734, ± 0.0812 across 8 pairs");
    expect(cell(1, 2).getAttribute("aria-label")).toBe(
      "L1, 'and', resid_pre: -1.000, ± 0.457 across 8 pairs, sign flips in 2 of 8 pairs",
    );
    expect(cell(0, 3).getAttribute("aria-label")).toBe("L0, 'John', resid_pre: NaN");
  });

  it("adds the same lines to the tooltip", () => {
    const { cell, tooltip } = setup(spreadAndFlips(), true, 8);
    cell(1, 2).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show).toHaveBeenLastCalledWith(cell(1, 2), [
      "L1, 'and'",
      "value: -1",
      "± 0.457 across 8 pairs",
      "sign flips in 2 of 8 pairs",
    ]);
    cell(3, 0).focus();
    expect(tooltip.show).toHaveBeenLastCalledWith(cell(3, 0), [
      "L3, 'When'",
      "value: 0.734",
      "± 0.0812 across 8 pairs",
    ]);
  });

  it("marks only cells whose sign flips, keeping their value text", () => {
    const { grid, cell } = setup(spreadAndFlips(), true, 8);
    expect([...grid.querySelectorAll(".pw-flip")]).toEqual([cell(1, 2)]);
    expect(cell(1, 2).textContent).toBe("-1.00");
    expect(cell(1, 2).style.backgroundColor).not.toBe("");
  });

  it("leaves panels without spread and flips as they were", () => {
    const { grid, cell, tooltip } = setup({}, true, 8);
    expect(grid.querySelector(".pw-flip")).toBeNull();
    expect(cell(1, 2).getAttribute("aria-label")).toBe("L1, 'and', resid_pre: -1.000");
    cell(1, 2).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show).toHaveBeenLastCalledWith(cell(1, 2), ["L1, 'and'", "value: -1"]);
  });

  it("says why cells before the first changed token are 0, and marks the column a level was opened at", () => {
    const { cell, tooltip, grid } = setup({ same_before: 3, mark_col: 4 });
    cell(1, 2).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show.mock.lastCall[1]).toContain(
      "0 by causality: before 'John', the first token the corruption changes, the clean and corrupted runs are the same",
    );
    cell(1, 3).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show.mock.lastCall[1].join(" ")).not.toContain("by causality");
    expect([...grid.querySelectorAll("th.pw-marked")].map((th) => th.textContent)).toEqual(["Mary (2)"]);
  });
});
