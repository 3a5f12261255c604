// @vitest-environment jsdom
// A circuit of edges (issue 29, part 5): its edges drawn as lines over the diagram of nodes, width by |score|,
// colour by sign; a tooltip on hover and keyboard focus; a click or Enter opens the edge; the downloaded figure
// keeps them. The circuit is the one Python sent (fixtures/contract.json, tests/test_protocol.py).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { panelScale } from "../src/colors.js";
import { edgePath, edgeStroke, edgeTooltipLines, placeEdges, renderEdges } from "../src/edges.js";
import { panelSvg } from "../src/export.js";
import widget from "../src/index.js";
import { fakeModel } from "./fake-model.js";

const contract = JSON.parse(readFileSync(join(import.meta.dirname, "fixtures", "contract.json"), "utf8"));
const [nodes, edges] = contract.edges.view.panels;
const scale = panelScale(nodes, 2);

function layer(panel = edges) {
  const actions = { drill: vi.fn(), focus: vi.fn(), back: vi.fn(() => true) };
  const tooltip = { show: vi.fn(), hide: vi.fn() };
  const el = renderEdges(panel, { scale, focus: { row: 0 }, tooltip, actions });
  document.body.replaceChildren(el);
  return { el, actions, tooltip, edge: (i) => el.querySelector(`.pw-edge[data-edge="${i}"]`) };
}

const key = (el, name) => el.dispatchEvent(new KeyboardEvent("keydown", { key: name, bubbles: true }));

describe("a circuit's edges", () => {
  it("are curves between the node centres, cut short of the nodes, bowed apart by their receiver's input", () => {
    const a = { x: 0, y: 100 };
    const b = { x: 0, y: 0 };
    expect(edgePath(a, b, 0, 10)).toBe("M0,90 Q0,50 0,10");
    expect(edgePath(a, b, 1, 10)).toBe("M0,90 Q20,50 0,10"); // a fifth of the length, sideways
    // The query, key and value of one head from one sender (three edges, one pair of nodes) are three curves.
    const [q, k, v] = [1, 2, -1].map((bend) => edgePath(a, b, bend, 10));
    expect(new Set([q, k, v]).size).toBe(3);
  });

  it("are red where the score is negative, blue where positive, wider the larger |score|", () => {
    const weak = edgeStroke(-0.5, scale, 2);
    const strong = edgeStroke(-2, scale, 2);
    expect(weak.color).toBe(strong.color); // colour by sign only
    expect(weak.color).toBe(scale(-1.7)); // the scale's red end
    expect(edgeStroke(1, scale, 2).color).toBe(scale(1.7)); // and its blue end
    expect(strong.width).toBe(6);
    expect(weak.width).toBeLessThan(strong.width);
    expect(edgeStroke(null, scale, 2).color).toBe("#888888");
  });

  it("draws one focusable line per edge Python sent, in the tab order once", () => {
    const { el, edge } = layer();
    expect(el.querySelectorAll(".pw-edge")).toHaveLength(edges.rows.length);
    expect(el.querySelectorAll('.pw-edge[tabindex="0"]')).toHaveLength(1);
    const first = edge(0);
    expect(first.getAttribute("role")).toBe("button");
    expect(first.getAttribute("aria-label")).toContain(edges.rows[0]);
    const [[sr, sc], [rr, rc]] = edges.ends[0];
    expect(first.dataset.ends).toBe(`${sr},${sc},${rr},${rc}`);
    const line = first.querySelector(".pw-edge-line");
    expect(line.getAttribute("stroke")).toBe(edgeStroke(edges.values[0][0], scale, 1).color);
  });

  it("shows sender -> receiver, the ranking score and method, and what a click opens, on hover and on focus", () => {
    const { tooltip, edge } = layer();
    const logits = edges.rows.findIndex((r) => r.endsWith("-> logits"));
    const lines = edgeTooltipLines(edges, logits);
    expect(lines[0]).toBe(edges.rows[logits]);
    expect(lines[1]).toMatch(/^ranking score \(exact\): -?\d/);
    expect(lines.at(-1)).toBe("click or Enter: its exact score, and path patching into the logits");
    edge(logits)
      .querySelector(".pw-edge-hit")
      .dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(tooltip.show).toHaveBeenLastCalledWith(expect.anything(), lines);
    edge(logits).dispatchEvent(new MouseEvent("mouseout", { bubbles: true }));
    expect(tooltip.hide).toHaveBeenCalled();
    edge(1).focus();
    expect(tooltip.show).toHaveBeenLastCalledWith(expect.anything(), edgeTooltipLines(edges, 1));
    const mlp = edges.receivers.indexOf("mlp_in");
    expect(edgeTooltipLines(edges, mlp).at(-1)).toContain("path patching into an MLP is not offered");
  });

  it("opens an edge on a click or Enter; arrows move between edges, Escape goes back", () => {
    const { actions, edge } = layer();
    const hit = edge(2).querySelector(".pw-edge-hit");
    hit.dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true }));
    expect(actions.drill).not.toHaveBeenCalled(); // shift-click selects cells; edges are not selected
    hit.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(actions.drill).toHaveBeenLastCalledWith(2, 0);
    edge(0).focus();
    key(edge(0), "ArrowDown");
    expect(document.activeElement).toBe(edge(1));
    expect(edge(1).getAttribute("tabindex")).toBe("0");
    expect(actions.focus).toHaveBeenLastCalledWith(1, 0);
    key(edge(1), "End");
    expect(document.activeElement).toBe(edge(edges.rows.length - 1));
    key(document.activeElement, "Enter");
    expect(actions.drill).toHaveBeenLastCalledWith(edges.rows.length - 1, 0);
    key(document.activeElement, "Escape");
    expect(actions.back).toHaveBeenCalledTimes(1);
  });

  it("in a saved page, opens only the edges opened in the notebook and says why the others do not", () => {
    const saved = { ...edges, opens: edges.rows.map((_, i) => [i === 0]), closed: "not in this saved page" };
    const { actions, edge } = layer(saved);
    edge(1)
      .querySelector(".pw-edge-hit")
      .dispatchEvent(new MouseEvent("click", { bubbles: true }));
    key(edge(1), "Enter");
    expect(actions.drill).not.toHaveBeenCalled();
    expect(edge(1).getAttribute("aria-disabled")).toBe("true");
    expect(edgeTooltipLines(saved, 1).at(-1)).toBe("opens nothing: not in this saved page");
    edge(0)
      .querySelector(".pw-edge-hit")
      .dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(actions.drill).toHaveBeenCalledWith(0, 0);
  });

  it("are laid between the centres of their nodes as the diagram is laid out", () => {
    const diagram = document.createElement("div");
    const { el } = layer();
    for (const [r, c] of edges.ends.flat()) {
      if (diagram.querySelector(`[data-row="${r}"][data-col="${c}"]`)) continue;
      const cell = document.createElement("td");
      Object.assign(cell.dataset, { row: r, col: c });
      cell.className = "pw-cell";
      cell.getBoundingClientRect = () => ({ left: 100 + 50 * c, top: 200 + 40 * r, width: 50, height: 40 });
      diagram.append(cell);
    }
    diagram.getBoundingClientRect = () => ({ left: 100, top: 200, width: 300, height: 300 });
    diagram.append(el);
    placeEdges(diagram, el);
    const [[sr, sc], [rr, rc]] = edges.ends[0];
    const d = el.querySelector(".pw-edge .pw-edge-line").getAttribute("d");
    const centre = (r, c) => ({ x: 50 * c + 25, y: 40 * r + 20 });
    const bend = Number(el.querySelector(".pw-edge").dataset.bend);
    expect(d).toBe(edgePath(centre(sr, sc), centre(rr, rc), bend, 8)); // a node of 12 px when none is drawn
    for (const path of el.querySelectorAll(".pw-edge")[0].querySelectorAll("path"))
      expect(path.getAttribute("d")).toBe(d);
  });
});

describe("the circuit view of edges in the widget", () => {
  function mount() {
    const model = fakeModel(structuredClone(contract.edges));
    const el = document.createElement("div");
    document.body.replaceChildren(el);
    widget.render({ model, el });
    return { model, el };
  }

  it("draws the edges over the diagram, not as a panel of their own, with their key", () => {
    const { el } = mount();
    expect(el.querySelectorAll('section[data-panel="edges"]')).toHaveLength(0);
    const diagram = el.querySelector('section[data-panel="circuit"] .pw-diagram');
    expect(diagram.querySelector("table.pw-grid-edges")).not.toBeNull();
    expect(diagram.querySelectorAll("svg.pw-edges .pw-edge")).toHaveLength(edges.rows.length);
    expect(el.querySelector(".pw-edges-note").textContent).toContain("width by |score|");
    const kept = el.querySelectorAll(".pw-node-kept");
    expect(kept.length).toBe(nodes.kept.flat().filter(Boolean).length);
    expect(kept[0].closest(".pw-cell").getAttribute("aria-label")).toContain(nodes.kept_note);
    // The logits and the embeddings are alone in their rows: named by the row, not by a head's column.
    const logits = el.querySelector('section[data-panel="circuit"] .pw-cell[data-row="0"][data-col="0"]');
    expect(logits.getAttribute("aria-label")).toMatch(/^logits, Circuit of \d+ edges/);
    expect(el.querySelector(".pw-circuit-level")).not.toBeNull();
  });

  it("asks Python to open an edge by its row of the edges panel", () => {
    const { model, el } = mount();
    el.querySelector('.pw-edge[data-edge="3"] .pw-edge-hit').dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(model.sent.at(-1)).toMatchObject({ type: "drill", panel: "edges", row: 3, col: 0 });
    expect(Object.keys(model.sent.at(-1)).sort()).toEqual(["type", "request_id", ...contract.messages.drill].sort());
  });

  it("keeps the edges in the downloaded SVG (and so the PNG drawn from it)", () => {
    const svg = panelSvg(nodes, scale, edges);
    const doc = new DOMParser().parseFromString(svg, "image/svg+xml");
    expect(doc.querySelector("parsererror")).toBeNull();
    expect(doc.querySelectorAll("path.pw-edge")).toHaveLength(edges.rows.length);
    expect(doc.querySelectorAll("path.pw-edge title")[0].textContent).toContain(edges.rows[0]);
    const drawn = nodes.absent.flat().filter((a) => !a).length;
    expect(doc.querySelectorAll("circle")).toHaveLength(drawn); // every node, as circles
  });
});
