// @vitest-environment jsdom
import { describe, expect, it, vi } from "vitest";
import { panelScale } from "../src/colors.js";
import { renderGrid } from "../src/grid.js";
import { panel4x5 } from "./fake-model.js";

function setup(panelOverrides = {}, backResult = true) {
  const panel = panel4x5(panelOverrides);
  const actions = { drill: vi.fn(), toggle: vi.fn(), focus: vi.fn(), back: vi.fn(() => backResult) };
  const tooltip = { show: vi.fn(), hide: vi.fn() };
  const grid = renderGrid(panel, { scale: panelScale(panel, null), focus: { row: 0, col: 0 }, selection: [], tooltip, actions });
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
    expect(tooltip.show).toHaveBeenLastCalledWith(cell(1, 1), ["L1, 'Mary (1)' · resid_pre", "value: 1"]);
  });

  it("drills on Enter and lets Escape through when there is no level to go back to", () => {
    const { cell, actions } = setup({}, false);
    key(cell(3, 2), "Enter");
    expect(actions.drill).toHaveBeenCalledWith(3, 2);
    const escape = key(cell(3, 2), "Escape");
    expect(actions.back).toHaveBeenCalled();
    expect(escape.defaultPrevented).toBe(false);
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
    expect(tooltip.show).toHaveBeenCalledWith(cell(3, 0), ["L3, 'When' · resid_pre", "value: 0.734"]);
  });
});
