import { rgb } from "d3-color";
import { scaleDiverging, scaleSequential } from "d3-scale";
import { interpolateGreens, interpolateRdBu } from "d3-scale-chromatic";

// Python sends NaN as null (JSON has no NaN); a stray non-finite number is
// treated the same so it can never be coloured as if it were a value.
export function isMissing(value) {
  return value === null || value === undefined || !Number.isFinite(value);
}

export function autoVmax(values) {
  let max = 0;
  for (const row of values) {
    for (const v of row) if (!isMissing(v)) max = Math.max(max, Math.abs(v));
  }
  // An all-zero or all-NaN panel still needs a non-degenerate domain.
  return max > 0 ? max : 1;
}

// A user-typed range is honoured only when usable; anything else means auto.
export function validVmax(vmax) {
  return Number.isFinite(vmax) && vmax > 0 ? vmax : null;
}

// Diverging panels hold a metric where 0 means "no effect", so 0 must map to
// RdBu's neutral midpoint whatever the range; values past a fixed vmax
// saturate instead of wrapping. Sequential panels are attention weights in [0, 1].
export function panelScale(panel, vmax) {
  if (!panel.diverging) return scaleSequential(interpolateGreens).domain([0, 1]).clamp(true);
  const m = validVmax(vmax) ?? autoVmax(panel.values);
  return scaleDiverging(interpolateRdBu).domain([-m, 0, m]).clamp(true);
}

function channelToLinear(c) {
  const s = c / 255;
  return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
}

function luminance(color) {
  const { r, g, b } = rgb(color);
  return 0.2126 * channelToLinear(r) + 0.7152 * channelToLinear(g) + 0.0722 * channelToLinear(b);
}

// Pick whichever of black or white has the higher WCAG contrast ratio.
export function textColorOn(background) {
  const l = luminance(background);
  return (l + 0.05) / 0.05 >= 1.05 / (l + 0.05) ? "#000" : "#fff";
}

// null for missing values: CSS draws those hatched, independent of the scale.
export function cellColors(scale, value) {
  if (isMissing(value)) return null;
  const background = scale(value);
  return { background, color: textColorOn(background) };
}
