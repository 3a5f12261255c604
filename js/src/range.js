import { autoVmax, validVmax } from "./colors.js";
import { formatTick } from "./format.js";

// The largest |value| of a view's diverging panels (attention patterns have their own 0-1 scale).
export function viewMax(view) {
  const maxima = (view?.panels ?? []).filter((p) => p.diverging).map((p) => autoVmax(p.values));
  return maxima.length ? Math.max(...maxima) : 1;
}

// One colour range for every diverging panel on screen, and the sentence that says which:
// the user's fixed range; else ±1 for a normalised view (view.normalized: each pair's clean run 1, its
// corrupted run 0, the display setting "scale"); else the largest |value| along the
// drill-down so far (`maxima`: one per level of the path), so a deeper level's small effects
// are not drawn as dark as the large ones above it.
export function colourRange(userVmax, normalized, maxima) {
  const fixed = validVmax(userVmax);
  if (fixed !== null) return { vmax: fixed, note: `Colours: ±${formatTick(fixed)}, the range you set.` };
  if (normalized) {
    return { vmax: 1, note: "Colours: ±1, fixed: the values are normalised (clean run 1, corrupted run 0)." };
  }
  const vmax = Math.max(1e-12, ...maxima.filter((m) => Number.isFinite(m) && m > 0));
  return {
    vmax,
    note: `Colours: ±${formatTick(vmax)}, the largest |value| along this drill-down (one range for every panel).`,
  };
}

// The maxima of the drill-down path after `view` is shown at its level: deeper levels are dropped.
export function pathMaxima(maxima, view) {
  const level = view?.level ?? 0;
  const out = maxima.slice(0, level);
  out[level] = viewMax(view);
  return out;
}
