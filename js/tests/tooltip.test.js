// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { quietFocus } from "../src/dom.js";
import { placeTooltip } from "../src/tooltip.js";

const cell = (left, top) => ({ left, top, right: left + 40, bottom: top + 20, width: 40, height: 20 });
const box = { left: 100, top: 50, right: 700, bottom: 450 };

describe("placeTooltip", () => {
  it("goes under the cell, centred, where it fits", () => {
    expect(placeTooltip(cell(300, 100), 100, 60, box)).toEqual({ left: 270, top: 124 });
  });

  it("goes above a cell of the bottom row, inside the visible box", () => {
    const at = placeTooltip(cell(300, 420), 100, 60, box);
    expect(at.top).toBe(420 - 4 - 60);
    expect(at.top + 60).toBeLessThanOrEqual(box.bottom);
  });

  it("moves right at the left edge and left at the right edge", () => {
    expect(placeTooltip(cell(100, 100), 200, 60, box).left).toBe(102);
    expect(placeTooltip(cell(660, 100), 200, 60, box).left).toBe(700 - 2 - 200);
  });

  it("stays inside a box too short for either side", () => {
    const at = placeTooltip(cell(300, 70), 100, 300, { left: 0, top: 50, right: 800, bottom: 120 });
    expect(at.top).toBe(52);
  });
});

describe("quietFocus", () => {
  it("marks the focus it moves while focus handlers run, then unmarks it", () => {
    const button = document.createElement("button");
    document.body.replaceChildren(button);
    let seen = null;
    button.addEventListener("focusin", () => {
      seen = button.dataset.pwQuiet;
    });
    quietFocus(button);
    expect(document.activeElement).toBe(button);
    expect(seen).toBe("");
    expect(button.dataset.pwQuiet).toBeUndefined();
  });
});
