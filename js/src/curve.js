import { h } from "./dom.js";
import { formatTick } from "./format.js";

const NS = "http://www.w3.org/2000/svg";
const W = 420;
const H = 170;
const PAD = { left: 40, right: 12, top: 10, bottom: 34 };

function svg(tag, attrs = {}, children = []) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs))
    if (value !== null && value !== undefined) el.setAttribute(name, value);
  el.append(...[children].flat().filter(Boolean));
  return el;
}

function text(x, y, content, anchor = "middle") {
  const t = svg("text", { x, y, "text-anchor": anchor, class: "pw-curve-text" });
  t.textContent = content;
  return t;
}

// y range: 0 to 1 at least, widened to every value and the target (faithfulness may pass 1 or go below 0).
function yDomain(ys, target) {
  const finite = ys.filter(Number.isFinite);
  const lo = Math.min(0, ...finite, target ?? 0);
  const hi = Math.max(1, ...finite, target ?? 1);
  return [lo, hi];
}

// A line chart of one row of values over panel.x (circuit sizes in %, on a log axis), with the target as a
// dashed line: MIB's faithfulness curve. Each point carries its column label and value as a tooltip.
export function renderCurve(panel) {
  const xs = panel.x;
  const ys = panel.values[0].map((v) => (v === null ? Number.NaN : v));
  const [lo, hi] = yDomain(ys, panel.target);
  const lx = xs.map((x) => Math.log10(x));
  const [x0, x1] = [Math.min(...lx), Math.max(...lx)];
  const px = (x) => PAD.left + ((Math.log10(x) - x0) / (x1 - x0 || 1)) * (W - PAD.left - PAD.right);
  const py = (y) => PAD.top + ((hi - y) / (hi - lo || 1)) * (H - PAD.top - PAD.bottom);
  const points = xs.map((x, i) => [px(x), py(ys[i]), i]).filter(([, y]) => Number.isFinite(y));
  const yTicks = [lo, 0, 0.5, 1, hi].filter((v, i, a) => v >= lo && v <= hi && a.indexOf(v) === i);
  const chart = svg("svg", { class: "pw-curve", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": panel.title }, [
    ...yTicks.flatMap((v) => [
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: py(v), y2: py(v), class: "pw-curve-grid" }),
      text(PAD.left - 4, py(v) + 3, formatTick(v), "end"),
    ]),
    ...xs.map((x) => text(px(x), H - PAD.bottom + 12, `${formatTick(x)}%`)),
    text((PAD.left + W - PAD.right) / 2, H - 4, panel.col_dim || "size"),
    Number.isFinite(panel.target)
      ? svg("line", {
          x1: PAD.left,
          x2: W - PAD.right,
          y1: py(panel.target),
          y2: py(panel.target),
          class: "pw-curve-target",
          "data-target": panel.target,
        })
      : null,
    Number.isFinite(panel.target) ? text(PAD.left + 4, py(panel.target) - 3, `target ${panel.target}`, "start") : null,
    svg("polyline", { class: "pw-curve-line", points: points.map(([x, y]) => `${x},${y}`).join(" ") }),
    ...points.map(([x, y, i]) =>
      svg("circle", { cx: x, cy: y, r: 3, class: "pw-curve-point" }, [
        svg("title", {}, [`${panel.cols[i]}: ${formatTick(ys[i])}`]),
      ]),
    ),
  ]);
  return h("div", { class: "pw-curve-box" }, chart);
}
