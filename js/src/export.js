import { cellColors } from "./colors.js";
import { h } from "./dom.js";
import { edgesMarkup } from "./edges.js";
import { formatValue } from "./format.js";

const CELL_W = 44;
const CELL_H = 22;
const NODE_H = 34; // a diagram of nodes: rows tall enough for the edges between them
const NODE_R = 7;
const LEFT = 90; // row labels
const TOP = 90; // title and rotated column labels

const xmlText = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// A node of a diagram (kind "nodes") as the widget draws it: filled by its value, grey where it is in the
// circuit without one (a circuit of edges), hollow outside the circuit.
function nodeSvg(panel, r, c, colors, x, y) {
  const fill = colors?.background ?? (panel.kept?.[r]?.[c] ? "#888888" : "#ffffff");
  const stroke = colors || panel.kept?.[r]?.[c] ? "#333333" : "#bbbbbb";
  return `<circle cx="${x + CELL_W / 2}" cy="${y + NODE_H / 2}" r="${NODE_R}" fill="${fill}" stroke="${stroke}"/>`;
}

// A grid panel as a standalone SVG document: its title, labels, and each cell in the colour and with the
// value the widget draws (issue 39, item 6: figures to take away). Cells without a value are left white. A
// diagram of nodes is drawn as nodes, with a circuit's edges over it (`edges`, an edges panel) as lines.
export function panelSvg(panel, scale, edges = null) {
  const nodes = panel.kind === "nodes";
  const cellH = nodes ? NODE_H : CELL_H;
  const title = 4 + panel.title.length * 6.5; // bold 11 px: the title is not cut (a circuit's says its faithfulness)
  const width = Math.ceil(Math.max(LEFT + panel.cols.length * CELL_W + 10, title));
  const height = TOP + panel.rows.length * cellH + 10;
  const digits = Math.abs(scale.domain().at(-1));
  const cells = panel.rows.flatMap((_, r) =>
    panel.cols.map((_, c) => {
      if (panel.absent?.[r]?.[c]) return "";
      const value = panel.values[r][c];
      const colors = cellColors(scale, value);
      const x = LEFT + c * CELL_W;
      const y = TOP + r * cellH;
      if (nodes) return nodeSvg(panel, r, c, colors, x, y);
      const fill = colors?.background ?? "#ffffff";
      const text = colors ? formatValue(value, 2, digits) : "";
      return (
        `<rect x="${x}" y="${y}" width="${CELL_W - 1}" height="${CELL_H - 1}" fill="${fill}"/>` +
        (text
          ? `<text x="${x + CELL_W / 2}" y="${y + 15}" fill="${colors.color}" text-anchor="middle">${text}</text>`
          : "")
      );
    }),
  );
  const rowLabels = panel.rows.map(
    (label, r) =>
      `<text x="${LEFT - 6}" y="${TOP + r * cellH + cellH / 2 + 4}" text-anchor="end">${xmlText(label)}</text>`,
  );
  const centre = (r, c) => ({ x: LEFT + c * CELL_W + CELL_W / 2, y: TOP + r * cellH + cellH / 2 });
  const lines = edges ? edgesMarkup(edges, scale, centre, NODE_R + 2) : [];
  const colLabels = panel.cols.map((label, c) => {
    const x = LEFT + c * CELL_W + CELL_W / 2;
    return `<text transform="translate(${x},${TOP - 6}) rotate(-60)">${xmlText(label)}</text>`;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="4" y="14" font-weight="bold">${xmlText(panel.title)}</text>`,
    ...rowLabels,
    ...colLabels,
    ...cells,
    ...lines,
    "</svg>",
  ].join("\n");
}

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// The SVG drawn on a canvas at twice its size, as PNG.
function downloadPng(name, svg) {
  const image = new Image();
  image.onload = () => {
    const canvas = h("canvas", { width: image.width * 2, height: image.height * 2 });
    const ctx = canvas.getContext("2d");
    ctx.scale(2, 2);
    ctx.drawImage(image, 0, 0);
    canvas.toBlob((blob) => blob && download(name, blob), "image/png");
  };
  image.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
}

// "SVG" and "PNG" buttons for a grid panel (with the circuit's edges drawn over it: `edges`).
export function renderDownloads(panel, scale, edges = null) {
  const name = `patchwidget-${panel.id}`;
  const svg = () => panelSvg(panel, scale, edges);
  return h("span", { class: "pw-downloads" }, [
    h(
      "button",
      {
        type: "button",
        class: "pw-download-svg",
        title: "Download this panel as SVG",
        onclick: () => download(`${name}.svg`, new Blob([svg()], { type: "image/svg+xml" })),
      },
      "SVG",
    ),
    h(
      "button",
      {
        type: "button",
        class: "pw-download-png",
        title: "Download this panel as PNG",
        onclick: () => downloadPng(`${name}.png`, svg()),
      },
      "PNG",
    ),
  ]);
}
