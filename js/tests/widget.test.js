// @vitest-environment jsdom
import { beforeEach, describe, expect, it } from "vitest";
import widget from "../src/index.js";
import { fakeModel, initialState, panel4x5 } from "./fake-model.js";

let el;
let model;
let cleanup;

function mount(overrides = {}) {
  model = fakeModel(initialState(overrides));
  el = document.createElement("div");
  document.body.replaceChildren(el);
  cleanup = widget.render({ model, el });
}

const $ = (selector) => el.querySelector(selector);
const $$ = (selector) => el.querySelectorAll(selector);
const cell = (r, c) => $(`.pw-cell[data-row="${r}"][data-col="${c}"]`);
const shiftClick = (target) => target.dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true }));

function pythonView(requestId, extra = {}) {
  return { request_id: requestId, level: 1, title: "heads", note: "", exact: true, panels: [panel4x5({ id: "heads", title: "heads" })], ...extra };
}

beforeEach(() => mount());

describe("widget", () => {
  it("renders the root, one grid per panel and a legend", () => {
    expect($(".patchwidget")).not.toBeNull();
    expect($$('.pw-grid[role="grid"]')).toHaveLength(1);
    expect($$(".pw-legend")).toHaveLength(1);
    expect([...$$(".pw-legend-ticks span")].map((s) => s.textContent)).toEqual(["-1", "0", "1"]);
    expect($(".pw-progress")).toBeNull();
    expect($(".pw-error")).toBeNull();
    expect($(".pw-note")).toBeNull();
  });

  it("sends drill with a fresh request id on click", () => {
    cell(2, 3).click();
    cell(1, 0).click();
    expect(model.sent).toEqual([
      { type: "drill", panel: "resid_pre", row: 2, col: 3, request_id: 1 },
      { type: "drill", panel: "resid_pre", row: 1, col: 0, request_id: 2 },
    ]);
  });

  it("syncs the selection on shift-click and sends a joint request", () => {
    shiftClick(cell(1, 1));
    expect(model.get("selection")).toEqual([{ panel: "resid_pre", row: 1, col: 1 }]);
    expect(model.saves).toBe(1);
    shiftClick(cell(2, 2));
    expect(cell(1, 1).getAttribute("aria-selected")).toBe("true");
    $(".pw-joint").click();
    expect(model.sent.at(-1)).toEqual({
      type: "joint",
      request_id: 1,
      cells: [{ panel: "resid_pre", row: 1, col: 1 }, { panel: "resid_pre", row: 2, col: 2 }],
    });
    $(".pw-clear-selection").click();
    expect(model.get("selection")).toEqual([]);
    expect($(".pw-joint")).toBeNull();
  });

  it("keeps keyboard focus on its cell across a selection re-render", () => {
    cell(1, 1).focus();
    cell(1, 1).dispatchEvent(new KeyboardEvent("keydown", { key: " ", bubbles: true }));
    expect(model.get("selection")).toHaveLength(1);
    expect(document.activeElement).toBe(cell(1, 1));
  });

  it("draws a newer view but not a stale one", () => {
    cell(0, 0).click(); // request 1
    cell(0, 1).click(); // request 2
    model.set("view", pythonView(1));
    expect($(".pw-grid").getAttribute("aria-label")).toBe("resid_pre");
    model.set("view", pythonView(2));
    expect($(".pw-grid").getAttribute("aria-label")).toBe("heads");
  });

  it("shows progress only for the latest request and cancels", () => {
    cell(0, 0).click(); // request 1
    model.set("status", { state: "running", request_id: 1, done: 3, total: 20, message: "" });
    expect($(".pw-progress").textContent).toContain("3 / 20");
    cell(0, 1).click(); // request 2 supersedes 1
    expect($(".pw-progress")).toBeNull();
    model.set("status", { state: "running", request_id: 2, done: 0, total: 20, message: "" });
    $(".pw-cancel").click();
    expect(model.sent.at(-1)).toEqual({ type: "cancel" });
    model.set("status", { state: "idle", request_id: 2, done: 20, total: 20, message: "" });
    expect($(".pw-progress")).toBeNull();
  });

  it("shows errors of the current request readably", () => {
    model.set("status", { state: "error", request_id: 0, done: 0, total: 0, message: "Unknown site 'foo'.\nValid sites: resid_pre" });
    expect($(".pw-error").textContent).toContain("Unknown site 'foo'.\nValid sites: resid_pre");
    cell(0, 0).click();
    expect($(".pw-error")).toBeNull();
  });

  it("goes back on Escape and from the breadcrumb", () => {
    model.set("view", pythonView(0, { level: 1 }));
    model.set("breadcrumb", [{ label: "resid_pre" }, { label: "L3 · Mary (1)" }]);
    cell(0, 0).focus();
    cell(0, 0).dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true, cancelable: true }));
    expect(model.sent.at(-1)).toEqual({ type: "back", level: 0, request_id: 1 });
    const crumbs = $$(".pw-breadcrumb button");
    expect(crumbs).toHaveLength(2);
    expect(crumbs[1].getAttribute("aria-current")).toBe("page");
    crumbs[0].click();
    expect(model.sent.at(-1)).toEqual({ type: "back", level: 0, request_id: 2 });
  });

  it("shows the note and marks estimates", () => {
    model.set("view", pythonView(0, { note: "Attribution is poor for resid_pre.", exact: false }));
    expect($(".pw-note").textContent).toBe("Attribution is poor for resid_pre.");
    expect($(".pw-estimate").textContent).toBe("estimate");
  });

  it("sends set requests from the controls", () => {
    const tab = [...$$(".pw-site-tab")].find((b) => b.dataset.site === "mlp_out");
    tab.click();
    expect(model.sent.at(-1)).toEqual({ type: "set", key: "site", value: "mlp_out", request_id: 1 });
    $(".pw-metric").selectedIndex = 2;
    $(".pw-metric").dispatchEvent(new Event("change"));
    expect(model.sent.at(-1)).toEqual({ type: "set", key: "metric", value: "prob", request_id: 2 });
    const current = [...$$(".pw-site-tab")].find((b) => b.dataset.site === "resid_pre");
    current.click();
    expect(model.sent).toHaveLength(2);
  });

  it("offers a pair select only with several pairs", () => {
    expect($(".pw-pair")).toBeNull();
    model.set("controls", { ...model.get("controls"), n_pairs: 3 });
    const options = [...$(".pw-pair").options].map((o) => o.textContent);
    expect(options).toEqual(["mean over pairs", "pair 0", "pair 1", "pair 2"]);
    $(".pw-pair").selectedIndex = 2;
    $(".pw-pair").dispatchEvent(new Event("change"));
    expect(model.sent.at(-1)).toEqual({ type: "set", key: "pair", value: 1, request_id: 1 });
  });

  it("sets vmax from the colour-range control", () => {
    expect($(".pw-vmax-auto").checked).toBe(true);
    expect($(".pw-vmax").disabled).toBe(true);
    $(".pw-vmax-auto").click();
    expect(model.get("vmax")).toBe(1);
    $(".pw-vmax").value = "0.5";
    $(".pw-vmax").dispatchEvent(new Event("change"));
    expect(model.get("vmax")).toBe(0.5);
    expect([...$$(".pw-legend-ticks span")].map((s) => s.textContent)).toEqual(["-0.5", "0", "0.5"]);
    $(".pw-vmax-auto").click();
    expect(model.get("vmax")).toBeNull();
  });

  it("removes its model listeners on cleanup", () => {
    expect(model.listenerCount()).toBe(6);
    cleanup();
    expect(model.listenerCount()).toBe(0);
  });
});
