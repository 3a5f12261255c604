// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { panelScale } from "../src/colors.js";
import { panelSvg } from "../src/export.js";
import { renderGrid } from "../src/grid.js";
import { panel4x5 } from "./fake-model.js";

describe("panelSvg", () => {
  it("draws every cell in the colour and with the value the grid shows", () => {
    const panel = panel4x5({ title: "resid_pre <L3>" });
    const scale = panelScale(panel, null);
    const doc = new DOMParser().parseFromString(panelSvg(panel, scale), "image/svg+xml");
    expect(doc.querySelector("parsererror")).toBeNull();
    const rects = [...doc.querySelectorAll("rect")].slice(1); // the first is the white background
    expect(rects).toHaveLength(20);
    const grid = renderGrid(panel, { scale, focus: { row: 0, col: 0 }, selection: [], tooltip: {}, actions: {} });
    const cells = [...grid.querySelectorAll(".pw-cell")];
    const drawn = cells.map((c) => c.style.backgroundColor || "#ffffff");
    const probe = document.createElement("div");
    const norm = (color) => {
      probe.style.backgroundColor = color;
      return probe.style.backgroundColor;
    };
    expect(rects.map((r) => norm(r.getAttribute("fill")))).toEqual(drawn.map(norm));
    const texts = [...doc.querySelectorAll("text")].map((t) => t.textContent);
    expect(texts[0]).toBe("resid_pre <L3>"); // escaped in the file, text when read
    expect(texts).toContain(cells[15].textContent); // 0.73
  });
});
