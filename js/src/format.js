import { isMissing } from "./colors.js";

export function formatValue(value, digits) {
  return isMissing(value) ? "NaN" : value.toFixed(digits);
}

// Six significant digits: exact enough to compare cells, without the float32
// noise (0.7341234087944031) that full precision would show.
export function formatExact(value) {
  return isMissing(value) ? "NaN" : String(Number(value.toPrecision(6)));
}

export function formatTick(value) {
  return String(Number(value.toPrecision(3)));
}
