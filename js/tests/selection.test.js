import { describe, expect, it } from "vitest";
import { isSelected, toggleCell } from "../src/selection.js";

describe("selection", () => {
  const a = { panel: "p", row: 0, col: 1 };
  const b = { panel: "q", row: 0, col: 1 };

  it("adds and removes cells by value, keeping panels apart", () => {
    const one = toggleCell([], a);
    expect(one).toEqual([a]);
    const two = toggleCell(one, b);
    expect(two).toEqual([a, b]);
    expect(toggleCell(two, { ...a })).toEqual([b]);
  });

  it("does not mutate its input", () => {
    const start = [a];
    toggleCell(start, b);
    expect(start).toEqual([a]);
    expect(isSelected(start, b)).toBe(false);
  });
});
