import { h } from "./dom.js";
import { formatTick } from "./format.js";

const STOPS = 11;

// The domain doubles as the tick list: [-vmax, 0, vmax] for diverging
// scales, [0, 1] for attention patterns; CSS spreads ticks edge to edge,
// which puts 0 at the centre of a diverging bar.
export function renderLegend(scale) {
  const domain = scale.domain();
  const lo = domain[0];
  const hi = domain[domain.length - 1];
  const colors = Array.from({ length: STOPS }, (_, i) => scale(lo + ((hi - lo) * i) / (STOPS - 1)));
  return h(
    "div",
    { class: "pw-legend", role: "img", "aria-label": `Colour scale from ${formatTick(lo)} to ${formatTick(hi)}` },
    [
      h("div", { class: "pw-legend-bar", style: `background: linear-gradient(to right, ${colors.join(", ")})` }),
      h(
        "div",
        { class: "pw-legend-ticks", "aria-hidden": "true" },
        domain.map((v) => h("span", {}, formatTick(v))),
      ),
    ],
  );
}
