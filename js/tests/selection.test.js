import { describe, expect, it } from "vitest";
import { isSelected, saysRefusal, toggleCell } from "../src/selection.js";

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

describe("saysRefusal", () => {
  const panels = [{ id: "components" }, { id: "pattern", says_refused: "attn_pattern cells cannot be generated" }];
  const component = { panel: "components", row: 3, col: 4 };
  const pattern = { panel: "pattern", row: 4, col: 1 };

  it("is null where pw.generate would run, and its reason for a refused panel's cell or for every cell", () => {
    expect(saysRefusal({ panels }, [component])).toBeNull();
    expect(saysRefusal({ panels }, [component, pattern])).toBe("attn_pattern cells cannot be generated");
    expect(saysRefusal({ panels, disabled: { says: "noise" } }, [component])).toBe("noise");
    expect(saysRefusal(undefined, [pattern])).toBeNull();
  });
});
