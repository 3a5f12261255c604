import { isMissing } from "./colors.js";
import { formatTick } from "./format.js";

// Python adds "spread" and "flips" only to views of the mean over several
// prompt pairs; a panel without them yields no extra text or marker, so
// single-pair views read exactly as before.
export function cellFlips(panel, row, col) {
  const flips = panel.flips?.[row]?.[col];
  return Number.isInteger(flips) && flips > 0 ? flips : 0;
}

export function panelHasFlips(panel) {
  return (panel.flips ?? []).some((row) => row.some((n) => n > 0));
}

// A count of pairs is only said when controls carry one, so a late or missing
// n_pairs degrades to vaguer text rather than "of undefined".
function pairCount(n, nPairs) {
  const of = nPairs > 0 ? ` of ${nPairs}` : "";
  return `${n}${of} pair${n === 1 && !of ? "" : "s"}`;
}

// Shared by tooltip and aria-label so sighted and screen-reader users get the
// same facts. Three significant digits: a spread is a rough statistic, and
// fixed decimals would print small spreads as 0.000.
export function consistencyNotes(panel, row, col, nPairs) {
  const spread = panel.spread?.[row]?.[col];
  const flips = cellFlips(panel, row, col);
  const across = nPairs > 0 ? `${nPairs} pairs` : "pairs";
  return [
    isMissing(spread) ? null : `± ${formatTick(spread)} across ${across}`,
    flips > 0 ? `sign flips in ${pairCount(flips, nPairs)}` : null,
  ].filter(Boolean);
}
