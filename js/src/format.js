import { isMissing } from "./colors.js";

// Cell text: enough decimals for the panel's range (``scale`` is its largest
// absolute value), so a tinted cell never reads 0.00, and no "-0.00".
export function formatValue(value, digits, scale = 1) {
  if (isMissing(value)) return "NaN";
  const extra = scale > 0 && scale < 1 ? Math.min(4, Math.max(0, -Math.floor(Math.log10(scale)) - 1)) : 0;
  const text = value.toFixed(digits + extra);
  return Number(text) === 0 ? (0).toFixed(digits + extra) : text;
}

// Six significant digits: exact enough to compare cells, without the float32
// noise (0.7341234087944031) that full precision would show.
export function formatExact(value) {
  return isMissing(value) ? "NaN" : String(Number(value.toPrecision(6)));
}

export function formatTick(value) {
  return String(Number(value.toPrecision(3)));
}
