import { interpolateGreens, interpolateRdBu } from "d3-scale-chromatic";
import { describe, expect, it } from "vitest";
import { autoVmax, cellColors, panelScale, textColorOn, validVmax } from "../src/colors.js";

const diverging = (values) => ({ diverging: true, values });

describe("panelScale", () => {
  it("centres a diverging scale on 0 with a symmetric auto range", () => {
    const scale = panelScale(diverging([[-0.2, 0.8]]), null);
    expect(scale.domain()).toEqual([-0.8, 0, 0.8]);
    expect(scale(0)).toBe(interpolateRdBu(0.5));
    expect(scale(0.8)).toBe(interpolateRdBu(1));
    expect(scale(-0.8)).toBe(interpolateRdBu(0));
  });

  it("uses a fixed vmax and saturates beyond it", () => {
    const scale = panelScale(diverging([[5]]), 2);
    expect(scale.domain()).toEqual([-2, 0, 2]);
    expect(scale(5)).toBe(scale(2));
    expect(scale(-5)).toBe(scale(-2));
  });

  it("falls back to auto for an unusable vmax", () => {
    expect(panelScale(diverging([[3]]), 0).domain()).toEqual([-3, 0, 3]);
    expect(panelScale(diverging([[3]]), -1).domain()).toEqual([-3, 0, 3]);
  });

  it("maps attention patterns to a fixed 0..1 sequential scale, ignoring vmax", () => {
    const scale = panelScale({ diverging: false, values: [[0.2]] }, 5);
    expect(scale.domain()).toEqual([0, 1]);
    expect(scale(1)).toBe(interpolateGreens(1));
  });
});

describe("autoVmax", () => {
  it("takes the largest absolute value and skips NaN", () => {
    expect(
      autoVmax([
        [null, -3],
        [2, NaN],
      ]),
    ).toBe(3);
  });

  it("never returns a degenerate range", () => {
    expect(autoVmax([[0, 0]])).toBe(1);
    expect(autoVmax([[null]])).toBe(1);
  });
});

describe("cell colours", () => {
  it("returns null for NaN so CSS can draw it distinctly", () => {
    const scale = panelScale(diverging([[1]]), null);
    expect(cellColors(scale, null)).toBeNull();
    expect(cellColors(scale, NaN)).toBeNull();
  });

  it("chooses readable text on dark and light backgrounds", () => {
    expect(textColorOn("#053061")).toBe("#fff");
    expect(textColorOn("#f7f7f7")).toBe("#000");
    const scale = panelScale(diverging([[1]]), null);
    expect(cellColors(scale, 1).color).toBe("#fff");
    expect(cellColors(scale, 0).color).toBe("#000");
  });

  it("accepts only positive finite vmax", () => {
    expect(validVmax(0.5)).toBe(0.5);
    expect([0, -1, NaN, Infinity, null].map(validVmax)).toEqual([null, null, null, null, null]);
  });
});
