import { describe, expect, it } from "vitest";
import { cellFlips, consistencyNotes, panelHasFlips } from "../src/consistency.js";
import { panel4x5 } from "./fake-model.js";

const mean = panel4x5({
  spread: [
    [0.1234, 0, 0.5, null, 0.2],
    [0, 0, 0, 0, 0],
    [0.00012345, 0, 0, 0, 0],
    [12.345, 0, 0, 0, 0],
  ],
  flips: [
    [2, 0, 1, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
  ],
});

describe("consistency across pairs", () => {
  it("says the spread and, when there are any, the sign flips", () => {
    expect(consistencyNotes(mean, 0, 0, 8)).toEqual(["± 0.123 across 8 pairs", "sign flips in 2 of 8 pairs"]);
    expect(consistencyNotes(mean, 0, 1, 8)).toEqual(["± 0 across 8 pairs"]);
  });

  it("keeps three significant digits at any scale", () => {
    expect(consistencyNotes(mean, 2, 0, 8)).toEqual(["± 0.000123 across 8 pairs"]);
    expect(consistencyNotes(mean, 3, 0, 8)).toEqual(["± 12.3 across 8 pairs"]);
  });

  it("skips a missing spread but still reports flips", () => {
    expect(consistencyNotes({ ...mean, flips: [[0, 0, 0, 3]] }, 0, 3, 8)).toEqual(["sign flips in 3 of 8 pairs"]);
  });

  it("words the facts without a pair count when controls lack one", () => {
    expect(consistencyNotes(mean, 0, 0, undefined)).toEqual(["± 0.123 across pairs", "sign flips in 2 pairs"]);
    expect(consistencyNotes(mean, 0, 2, 0)).toEqual(["± 0.5 across pairs", "sign flips in 1 pair"]);
  });

  it("adds nothing to panels without spread and flips", () => {
    const plain = panel4x5();
    expect(consistencyNotes(plain, 0, 0, 8)).toEqual([]);
    expect(cellFlips(plain, 0, 0)).toBe(0);
    expect(panelHasFlips(plain)).toBe(false);
    expect(panelHasFlips(mean)).toBe(true);
    expect(
      panelHasFlips({
        ...mean,
        flips: [
          [0, 0],
          [0, 0],
        ],
      }),
    ).toBe(false);
  });
});
