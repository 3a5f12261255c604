import { describe, expect, it } from "vitest";
import { formatValue } from "../src/format.js";

describe("formatValue", () => {
  it("keeps two decimals for panels with a range of about 1", () => {
    expect(formatValue(0.734, 2, 1)).toBe("0.73");
  });
  it("adds decimals for panels with a small range, so tinted cells are not 0.00", () => {
    expect(formatValue(0.0043, 2, 0.0209)).toBe("0.004");
    expect(formatValue(-0.0017, 2, 0.0209)).toBe("-0.002");
  });
  it("never prints a negative zero", () => {
    expect(formatValue(-0.0001, 2, 1)).toBe("0.00");
  });
  it("prints NaN for missing values", () => {
    expect(formatValue(null, 2, 1)).toBe("NaN");
  });
});
