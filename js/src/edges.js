import { isMissing } from "./colors.js";
import { formatExact, formatValue } from "./format.js";

// A circuit's edges (a panel of kind "edges", one row per edge: levels.py / circuit_view.py) drawn as lines over
// the diagram of nodes it names (panel.on): from the sender's node to the receiver's, width by |score|, red
// where the score is negative and blue where positive (the colour scale's ends).

const NS = "http://www.w3.org/2000/svg";
const MIN_WIDTH = 1.5; // px: the weakest edge drawn
const MORE_WIDTH = 4.5; // px added for the strongest
const HIT_WIDTH = 10; // px: the invisible stroke a pointer hits
// How far each kind of receiver input bows its line, in units of the line's own bend: the query, key and value of
// one head from one sender would otherwise be drawn on top of each other.
const BENDS = { head_q: 1, head_k: 2, head_v: -1, mlp_in: 1, logits: -1 };

function svg(tag, attrs = {}, children = []) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs))
    if (value !== null && value !== undefined) el.setAttribute(name, value);
  el.append(...children);
  return el;
}

const round = (v) => Math.round(v * 10) / 10;

// The SVG path of an edge from node centre `a` to node centre `b` ({x, y}): a quadratic curve bowed sideways by
// `bend` (BENDS, one unit: a fifth of its length, at least 8 px), cut `radius` px short of both centres so that
// the nodes stay clickable.
export function edgePath(a, b, bend, radius = 0) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const length = Math.hypot(dx, dy) || 1;
  const [ux, uy] = [dx / length, dy / length];
  const cut = Math.min(radius, length / 3);
  const start = { x: a.x + ux * cut, y: a.y + uy * cut };
  const end = { x: b.x - ux * cut, y: b.y - uy * cut };
  const off = bend * Math.max(8, 0.2 * length);
  const control = { x: (a.x + b.x) / 2 - uy * off, y: (a.y + b.y) / 2 + ux * off };
  return `M${round(start.x)},${round(start.y)} Q${round(control.x)},${round(control.y)} ${round(end.x)},${round(end.y)}`;
}

export function edgeBend(receiver) {
  return BENDS[receiver] ?? 1;
}

// An edge's stroke: the colour scale's end for its sign (grey without a score), and its width by |score| against
// the largest of the panel's.
export function edgeStroke(value, scale, largest) {
  const top = Math.abs(scale.domain().at(-1));
  const color = isMissing(value) || value === 0 ? "#888888" : scale(Math.sign(value) * top * 0.85);
  const share = isMissing(value) || !(largest > 0) ? 0 : Math.abs(value) / largest;
  return { color, width: round(MIN_WIDTH + MORE_WIDTH * share) };
}

export function largestScore(panel) {
  return Math.max(0, ...panel.values.map((row) => (isMissing(row[0]) ? 0 : Math.abs(row[0]))));
}

// Whether a click on edge i opens its level: the panel says so (the saved page), as for a grid's cells.
export function edgeOpens(panel, i) {
  return Boolean(panel.clickable) && (panel.opens?.[i]?.[0] ?? true);
}

// The tooltip of edge i: sender -> receiver, its ranking score and method, where a key-value head is drawn, and
// what a click opens (or why it opens nothing).
export function edgeTooltipLines(panel, i) {
  const opens = edgeOpens(panel, i)
    ? [`click or Enter: ${panel.opens_to?.[i] ?? "open it"}`]
    : panel.closed
      ? [`opens nothing: ${panel.closed}`]
      : [];
  return [panel.rows[i], `${panel.cols[0]}: ${formatExact(panel.values[i][0])}`, ...(panel.tips?.[i] ?? []), ...opens];
}

function edgeLabel(panel, i) {
  return [panel.rows[i], `${panel.cols[0]}: ${formatValue(panel.values[i][0], 3)}`, ...(panel.tips?.[i] ?? [])].join(
    ", ",
  );
}

function renderEdge(panel, i, scale, largest, focused) {
  const { color, width } = edgeStroke(panel.values[i][0], scale, largest);
  const [[sr, sc], [rr, rc]] = panel.ends[i];
  return svg(
    "g",
    {
      class: `pw-edge${edgeOpens(panel, i) ? " pw-clickable" : ""}`,
      role: "button",
      tabindex: i === focused ? 0 : -1,
      "data-edge": i,
      "data-ends": `${sr},${sc},${rr},${rc}`,
      "data-bend": edgeBend(panel.receivers?.[i]),
      "data-pw-key": `edge:${panel.id}:${i}`,
      "aria-label": edgeLabel(panel, i),
      "aria-disabled": edgeOpens(panel, i) ? null : "true",
    },
    [
      svg("path", { class: "pw-edge-halo", fill: "none", "stroke-width": width + 4 }),
      svg("path", {
        class: "pw-edge-line",
        fill: "none",
        stroke: color,
        "stroke-width": width,
        "data-score": panel.values[i][0],
      }),
      svg("path", { class: "pw-edge-hit", fill: "none", stroke: "transparent", "stroke-width": HIT_WIDTH }),
    ],
  );
}

// A point on the page to hang an edge's tooltip from: the pointer, or (keyboard focus) the middle of its line.
function anchorAt(g, event) {
  let x = event?.clientX;
  let y = event?.clientY;
  const line = g.querySelector(".pw-edge-line");
  if (!Number.isFinite(x) && typeof line.getPointAtLength === "function" && line.getAttribute("d")) {
    const mid = line.getPointAtLength(line.getTotalLength() / 2);
    const box = g.ownerSVGElement.getBoundingClientRect();
    [x, y] = [box.left + mid.x, box.top + mid.y];
  }
  if (!Number.isFinite(x)) return g;
  return { getBoundingClientRect: () => ({ left: x, right: x, top: y, bottom: y, width: 0, height: 0 }) };
}

const edgeOf = (event) => event.target.closest?.(".pw-edge");
const indexOf = (g) => Number(g.dataset.edge);

// Arrow keys move between the edges (in the panel's order, the ranking), Home and End to the first and last;
// Enter or Space opens one, Escape goes back. Other keys keep their meaning.
function onKeydown(layer, panel, actions, event) {
  const g = edgeOf(event);
  if (!g || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
  const i = indexOf(g);
  const n = panel.rows.length;
  const moves = { ArrowDown: i + 1, ArrowRight: i + 1, ArrowUp: i - 1, ArrowLeft: i - 1, Home: 0, End: n - 1 };
  if (event.key in moves)
    layer.querySelector(`.pw-edge[data-edge="${Math.max(0, Math.min(n - 1, moves[event.key]))}"]`)?.focus();
  else if (event.key === "Enter" || event.key === " ") {
    if (edgeOpens(panel, i)) actions.drill(i, 0);
  } else if (event.key !== "Escape" || !actions.back()) return;
  event.preventDefault();
  event.stopPropagation();
}

function onFocusin(layer, panel, { tooltip, actions }, event) {
  const g = edgeOf(event);
  if (!g) return;
  for (const other of layer.querySelectorAll('.pw-edge[tabindex="0"]')) other.setAttribute("tabindex", "-1");
  g.setAttribute("tabindex", "0");
  actions.focus(indexOf(g), 0);
  if (g.dataset.pwQuiet === undefined) tooltip.show(anchorAt(g), edgeTooltipLines(panel, indexOf(g)));
}

// The edges panel as an SVG layer to lay over its diagram (placeEdges draws the lines once the diagram is laid
// out). opts: scale (the diagram's colour scale), focus {row} (the edge in the tab order), tooltip, actions
// {drill, focus, back}.
export function renderEdges(panel, { scale, focus, tooltip, actions }) {
  const largest = largestScore(panel);
  const focused = Math.min(focus?.row ?? 0, panel.rows.length - 1);
  const layer = svg(
    "svg",
    { class: "pw-edges", role: "group", "aria-label": panel.title, "data-panel": panel.id },
    panel.rows.map((_, i) => renderEdge(panel, i, scale, largest, focused)),
  );
  layer.addEventListener("click", (e) => {
    const g = edgeOf(e);
    if (g && !e.shiftKey && edgeOpens(panel, indexOf(g))) actions.drill(indexOf(g), 0); // edges are not selected
  });
  layer.addEventListener("keydown", (e) => onKeydown(layer, panel, actions, e));
  layer.addEventListener("focusin", (e) => onFocusin(layer, panel, { tooltip, actions }, e));
  layer.addEventListener("focusout", () => tooltip.hide());
  layer.addEventListener("mouseover", (e) => {
    const g = edgeOf(e);
    if (g) tooltip.show(anchorAt(g, e), edgeTooltipLines(panel, indexOf(g)));
  });
  layer.addEventListener("mouseout", (e) => edgeOf(e) && tooltip.hide());
  return layer;
}

// The centre of node (row, col) of the diagram and its radius, in px from the diagram's top-left corner.
function nodeAt(diagram, row, col) {
  const cell = diagram.querySelector(`.pw-cell[data-row="${row}"][data-col="${col}"]`);
  if (!cell) return null;
  const box = diagram.getBoundingClientRect();
  const r = cell.getBoundingClientRect();
  const node = cell.querySelector(".pw-node")?.getBoundingClientRect();
  return { x: r.left - box.left + r.width / 2, y: r.top - box.top + r.height / 2, radius: (node?.width ?? 12) / 2 + 2 };
}

// Draw each edge of `layer` between its nodes as the diagram is laid out now (called again when it resizes).
export function placeEdges(diagram, layer) {
  for (const g of layer.querySelectorAll(".pw-edge")) {
    const [sr, sc, rr, rc] = g.dataset.ends.split(",").map(Number);
    const [a, b] = [nodeAt(diagram, sr, sc), nodeAt(diagram, rr, rc)];
    if (!a || !b) continue;
    const d = edgePath(a, b, Number(g.dataset.bend), Math.max(a.radius, b.radius));
    for (const path of g.querySelectorAll("path")) path.setAttribute("d", d);
  }
}

// The edges follow the diagram's layout: now, and whenever it changes size (fonts, zoom, a narrower notebook).
export function followLayout(diagram, layer) {
  if (typeof ResizeObserver === "undefined") return;
  new ResizeObserver(() => placeEdges(diagram, layer)).observe(diagram);
}

// The edges as SVG markup for a downloaded figure (export.js), `centre(row, col)` giving a node's centre there.
export function edgesMarkup(panel, scale, centre, radius) {
  const largest = largestScore(panel);
  return panel.rows.map((label, i) => {
    const { color, width } = edgeStroke(panel.values[i][0], scale, largest);
    const [[sr, sc], [rr, rc]] = panel.ends[i];
    const d = edgePath(centre(sr, sc), centre(rr, rc), edgeBend(panel.receivers?.[i]), radius);
    const title = `${label}: ${formatExact(panel.values[i][0])}`.replace(/[&<>]/g, (c) => `&#${c.charCodeAt(0)};`);
    return `<path class="pw-edge" d="${d}" fill="none" stroke="${color}" stroke-width="${width}"><title>${title}</title></path>`;
  });
}
