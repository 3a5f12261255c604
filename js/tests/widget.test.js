// @vitest-environment jsdom
import { readFileSync } from "node:fs";
import { join } from "node:path";
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
  return {
    request_id: requestId,
    level: 1,
    title: "heads",
    note: "",
    exact: true,
    panels: [panel4x5({ id: "heads", title: "heads" })],
    ...extra,
  };
}

beforeEach(() => mount());

describe("widget", () => {
  it("renders the root, one grid per panel and a legend", () => {
    expect($(".patchwidget")).not.toBeNull();
    // The protocol the page speaks, the one Python's protocol.fingerprint() names (patchwidget doctor).
    const source = readFileSync(join(import.meta.dirname, "../src/protocol.js"), "utf8");
    expect($(".patchwidget").dataset.protocol).toBe(source.match(/PROTOCOL = "([0-9a-f]{12})"/)[1]);
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
      cells: [
        { panel: "resid_pre", row: 1, col: 1 },
        { panel: "resid_pre", row: 2, col: 2 },
      ],
    });
    $(".pw-keep").click();
    expect(model.sent.at(-1)).toEqual({
      type: "keep",
      request_id: 2,
      cells: [
        { panel: "resid_pre", row: 1, col: 1 },
        { panel: "resid_pre", row: 2, col: 2 },
      ],
    });
    $(".pw-clear-selection").click();
    expect(model.get("selection")).toEqual([]);
    expect($(".pw-joint")).toBeNull();
    expect($(".pw-keep")).toBeNull();
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

  it("asks Python to find a circuit, or a bottleneck, with the target in the control", () => {
    $(".pw-target").value = "0.9";
    $(".pw-circuit-button").click();
    expect(model.sent.at(-1)).toEqual({ type: "circuit", request_id: 1, target: 0.9, level: "nodes" });
    expect($(".pw-circuit-button").textContent).toBe("Find circuit");
    expect($(".pw-find-button").textContent).toBe("Find bottleneck");
  });

  it("finds a circuit of nodes or of edges, as chosen beside the button, and keeps the choice on redraw", () => {
    const choice = $(".pw-circuit-level");
    expect([...choice.options].map((o) => [o.value, o.textContent])).toEqual([
      ["nodes", "of nodes"],
      ["edges", "of edges"],
    ]);
    expect(choice.value).toBe("nodes"); // the default
    choice.value = "edges";
    choice.dispatchEvent(new Event("change"));
    $(".pw-circuit-button").click();
    expect(model.sent.at(-1)).toEqual({ type: "circuit", request_id: 1, target: 0.8, level: "edges" });
    model.set("view", pythonView(1)); // the controls are drawn again
    expect($(".pw-circuit-level").value).toBe("edges");
    $(".pw-circuit-button").click();
    expect(model.sent.at(-1)).toEqual({ type: "circuit", request_id: 2, target: 0.8, level: "edges" });
  });

  it("asks Python to find a bottleneck with the target in the control", () => {
    expect($(".pw-target").value).toBe("0.8");
    $(".pw-target").value = "0.9";
    $(".pw-find-button").click();
    expect(model.sent.at(-1)).toEqual({ type: "find", request_id: 1, target: 0.9 });
    $(".pw-target").value = "7";
    $(".pw-find-button").click();
    expect(model.sent).toHaveLength(1); // out of (0, 1]: nothing sent, the value is put back
    expect($(".pw-target").value).toBe("0.8");
  });

  it("shows progress only for the latest request and cancels", () => {
    cell(0, 0).click(); // request 1
    model.set("status", { state: "running", request_id: 1, done: 3, total: 20, message: "" });
    expect($(".pw-progress").textContent).toContain("3 / 20");
    cell(0, 1).click(); // request 2 supersedes 1
    expect($(".pw-progress")).toBeNull();
    model.set("status", { state: "running", request_id: 2, done: 0, total: 20, message: "" });
    $(".pw-cancel").click();
    expect(model.sent.at(-1)).toEqual({ type: "cancel", request_id: 2 }); // the request it cancels
    model.set("status", { state: "idle", request_id: 2, done: 20, total: 20, message: "" });
    expect($(".pw-progress")).toBeNull();
  });

  it("shows a remote server's queue and run status beside the progress bar", () => {
    cell(0, 0).click(); // request 1
    model.set("status", {
      state: "running",
      request_id: 1,
      done: 0,
      total: 0,
      message: "",
      server: { status: "QUEUED", description: "position 3" },
    });
    expect($(".pw-server-status").textContent).toBe("server: queued (position 3)");
    model.set("status", {
      state: "running",
      request_id: 1,
      done: 4,
      total: 20,
      message: "",
      server: { status: "RUNNING", description: "" },
    });
    expect($(".pw-server-status").textContent).toBe("server: running");
    expect($(".pw-progress-text").textContent).toBe("4 / 20");
    model.set("status", { state: "running", request_id: 1, done: 5, total: 20, message: "" });
    expect($(".pw-server-status")).toBeNull(); // local runs have no server line
  });

  it("shows errors of the current request readably", () => {
    model.set("status", {
      state: "error",
      request_id: 0,
      done: 0,
      total: 0,
      message: "Unknown site 'foo'.\nValid sites: resid_pre",
    });
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
    $(".pw-metric").selectedIndex = 1;
    $(".pw-metric").dispatchEvent(new Event("change"));
    expect(model.sent.at(-1)).toEqual({ type: "set", key: "metric", value: "prob", request_id: 2 });
    // How the numbers are shown is a setting of its own, beside the metric (issue 38, item 3).
    expect([...$(".pw-scale").options].map((o) => o.textContent)).toEqual([
      "normalised (clean 1, corrupted 0)",
      "raw metric",
    ]);
    $(".pw-scale").selectedIndex = 1;
    $(".pw-scale").dispatchEvent(new Event("change"));
    expect(model.sent.at(-1)).toEqual({ type: "set", key: "scale", value: "raw", request_id: 3 });
    const current = [...$$(".pw-site-tab")].find((b) => b.dataset.site === "resid_pre");
    current.click();
    expect(model.sent).toHaveLength(3);
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

  it("draws every panel on one colour range and says which (issue 39, item 3)", () => {
    const ticks = () => [...$$(".pw-legend-ticks")].map((t) => [...t.children].map((s) => s.textContent));
    const scaled = (id, k) =>
      panel4x5({ id, title: id, values: panel4x5().values.map((r) => r.map((v) => v && v * k)) });
    const three = [scaled("head_q", 0.01), scaled("head_k", 0.1), scaled("head_v", 2)];
    // A normalised view: ±1, fixed, whatever the values.
    model.set("view", pythonView(0, { panels: three, normalized: true }));
    expect(ticks()).toEqual([
      ["-1", "0", "1"],
      ["-1", "0", "1"],
      ["-1", "0", "1"],
    ]);
    expect($(".pw-range-note").textContent).toContain("±1, fixed: the values are normalised");
    // The raw metric: the largest |value| of the view (head_v's 2), one range for the three panels.
    model.set("view", pythonView(0, { panels: three }));
    expect(ticks()).toEqual([
      ["-2", "0", "2"],
      ["-2", "0", "2"],
      ["-2", "0", "2"],
    ]);
    model.set("view", pythonView(0, { level: 0, panels: [scaled("top", 4)] }));
    expect(ticks()).toEqual([["-4", "0", "4"]]);
    // Deeper in the drill-down the range stays the largest along the path: small effects stay pale.
    model.set("view", pythonView(0, { level: 1, panels: three }));
    expect(ticks()).toEqual([
      ["-4", "0", "4"],
      ["-4", "0", "4"],
      ["-4", "0", "4"],
    ]);
    expect($(".pw-range-note").textContent).toContain("largest |value| along this drill-down");
    // Back at the top with smaller values, the deeper level is forgotten.
    model.set("view", pythonView(0, { level: 0, panels: [scaled("top", 0.2)] }));
    expect(ticks()).toEqual([["-0.2", "0", "0.2"]]);
  });

  it("shows what is being patched: model, pair, answers, baselines, the changed tokens marked", () => {
    const tok = (text, differs = false) => ({ text, differs });
    model.set("context", {
      model: "demo",
      pair: 0,
      n_pairs: 3,
      clean: [tok("When"), tok(" John", true), tok(" gave")],
      corrupt: [tok("When"), tok(" Mary", true), tok(" gave")],
      answer: " Mary",
      wrong: " John",
      baselines: { metric: "logit difference", clean: 3.25, corrupt: -2 },
    });
    expect($(".pw-context-facts").textContent).toBe(
      'demo · pair 0 of 3 · answer " Mary" vs " John" · logit difference: clean 3.25, corrupted -2.00',
    );
    expect([...$$(".pw-context mark")].map((m) => m.textContent)).toEqual([" John", " Mary"]);
  });

  it("shows an answer's tokens on hover (issue 30: answers of several tokens)", () => {
    model.set("context", {
      model: "demo",
      pair: 0,
      n_pairs: 1,
      clean: [{ text: "When", differs: false }],
      corrupt: [{ text: "When", differs: false }],
      answer: "Mary went to",
      wrong: "John",
      answer_tokens: ["Mary", "went", "to"],
      wrong_tokens: ["John"],
    });
    expect($(".pw-context-facts").textContent).toBe('demo · answer "Mary went to" vs "John"');
    const tip = $(".pw-tooltip");
    expect(tip.hidden).toBe(true);
    $(".pw-answer-answer").dispatchEvent(new MouseEvent("mouseenter"));
    expect(tip.hidden).toBe(false);
    expect([...tip.children].map((l) => l.textContent)).toEqual(["answer: 3 tokens", '"Mary" · "went" · "to"']);
    $(".pw-answer-answer").dispatchEvent(new MouseEvent("mouseleave"));
    expect(tip.hidden).toBe(true);
    $(".pw-answer-wrong").focus(); // the keyboard reaches it too
    expect([...tip.children].map((l) => l.textContent)).toEqual(["wrong: 1 token", '"John"']);
    expect($(".pw-answer-wrong").getAttribute("aria-label")).toBe('"John", wrong: 1 token: "John"');
  });

  it("says what Keep as circuit did (issue 39, item 6; it showed nothing)", () => {
    shiftClick(cell(1, 1));
    $(".pw-keep").click();
    const id = model.sent.at(-1).request_id;
    model.set("status", {
      state: "idle",
      request_id: id,
      done: 0,
      total: 0,
      message: "kept 1 cells as widget.circuit",
    });
    expect($(".pw-done").textContent).toBe("kept 1 cells as widget.circuit");
  });

  it("removes its model listeners on cleanup", () => {
    expect(model.listenerCount()).toBe(7);
    cleanup();
    expect(model.listenerCount()).toBe(0);
  });
});

describe("widget: consistency across pairs", () => {
  const meanView = () =>
    pythonView(0, {
      panels: [
        panel4x5({
          spread: [
            [0.1, 0.1, 0.1, null, 0.1],
            [0.1, 0.1, 0.25, 0.1, 0.1],
            [0.1, 0.1, 0.1, 0.1, 0.1],
            [0.1, 0.1, 0.1, 0.1, 0.1],
          ],
          flips: [
            [0, 0, 0, 0, 0],
            [0, 0, 2, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
          ],
        }),
      ],
    });

  beforeEach(() => mount({ controls: { ...initialState().controls, n_pairs: 8 }, view: meanView() }));

  it("labels cells with the spread and flips over controls.n_pairs and marks flipping cells", () => {
    expect(cell(1, 2).getAttribute("aria-label")).toBe(
      "L1, 'and', resid_pre: -1.000, ± 0.25 across 8 pairs, sign flips in 2 of 8 pairs",
    );
    expect($$(".pw-flip")).toHaveLength(1);
    expect(cell(1, 2).classList.contains("pw-flip")).toBe(true);
    expect($(".pw-flip-key").textContent).toBe("sign flips across pairs");
    cell(1, 2).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect($(".pw-tooltip").textContent).toContain("sign flips in 2 of 8 pairs");
  });

  it("drops the marks for a view of one pair", () => {
    model.set("view", pythonView(0, { panels: [panel4x5()] }));
    expect($(".pw-flip")).toBeNull();
    expect($(".pw-flip-key")).toBeNull();
    expect(cell(1, 2).getAttribute("aria-label")).toBe("L1, 'and', resid_pre: -1.000");
  });
});

describe("widget: joint patching result", () => {
  const joint = {
    cells: ["resid_pre L1 @1", "resid_pre L2 @2"],
    singles: [0.4, 0.24],
    sum_of_singles: 0.64,
    joint: 0.912,
    metric: "logit_diff_norm",
  };

  function patchTogether() {
    shiftClick(cell(1, 1));
    shiftClick(cell(2, 2));
    $(".pw-joint").click(); // request 1
    model.set("status", { state: "running", request_id: 1, done: 0, total: 0, message: "" });
    model.set("view", { ...model.get("view"), request_id: 1, joint });
    model.set("status", { state: "idle", request_id: 1, done: 0, total: 0, message: "" });
  }

  it("announces the result under the panels and keeps the selection", () => {
    const live = $('[role="status"]');
    expect($(".pw-joint-result")).toBeNull();
    patchTogether();
    const box = $(".pw-joint-result");
    expect(box).toBe(live); // the live region existed before its content arrived
    expect(box.getAttribute("role")).toBe("status");
    expect(box.compareDocumentPosition($(".pw-panels")) & Node.DOCUMENT_POSITION_PRECEDING).toBeTruthy();
    expect(box.textContent).toContain("Together: 0.912 (sum of singles 0.640)");
    expect([...box.querySelectorAll("td")].map((td) => td.textContent)).toEqual(["0.400", "0.240", "0.640", "0.912"]);
    expect(model.get("selection")).toHaveLength(2);
    expect(cell(1, 1).getAttribute("aria-selected")).toBe("true");
    expect($(".pw-selection-count").textContent).toBe("2 cells selected");
    expect($(".pw-progress")).toBeNull();
  });

  it("survives selection changes and disappears with the next view", () => {
    patchTogether();
    $(".pw-clear-selection").click();
    expect($(".pw-joint-result")).not.toBeNull();
    cell(0, 0).click(); // request 2
    model.set("view", pythonView(2));
    expect($(".pw-joint-result")).toBeNull();
    expect($('[role="status"]').childNodes).toHaveLength(0);
  });

  it("ignores a joint result that a newer request superseded", () => {
    shiftClick(cell(1, 1));
    $(".pw-joint").click(); // request 1
    cell(0, 0).click(); // request 2
    model.set("view", { ...model.get("view"), request_id: 1, joint });
    expect($(".pw-joint-result")).toBeNull();
  });
});

describe("widget: estimate, then exact values for the same request", () => {
  const running = (done, total) => model.set("status", { state: "running", request_id: 1, done, total, message: "" });
  const note =
    "Attribution estimate, shown while the exact values are computed. Attribution patching is a linear estimate.";

  it("draws both views, badges only the estimate and keeps the progress bar until done", () => {
    cell(2, 3).click(); // request 1
    running(0, 0);
    model.set(
      "view",
      pythonView(1, {
        exact: false,
        note,
        panels: [panel4x5({ id: "heads", title: "estimate", values: panel4x5().values.map((r) => r.map(() => 0.5)) })],
      }),
    );
    running(0, 0);
    expect($(".pw-grid").getAttribute("aria-label")).toBe("estimate");
    expect($(".pw-estimate")).not.toBeNull();
    expect($(".pw-panel-estimate")).not.toBeNull();
    expect($(".pw-note").textContent).toBe(note);
    expect($(".pw-progress")).not.toBeNull();
    running(7, 20);
    expect($(".pw-progress-text").textContent).toBe("7 / 20");

    cell(1, 1).focus();
    model.set("view", pythonView(1, { exact: true, note: "" }));
    expect($(".pw-grid").getAttribute("aria-label")).toBe("heads");
    expect(cell(1, 1).textContent).toBe("1.00");
    expect($(".pw-estimate")).toBeNull();
    expect($(".pw-panel-estimate")).toBeNull();
    expect($(".pw-note")).toBeNull();
    expect(document.activeElement).toBe(cell(1, 1)); // keyboard users stay on their cell
    expect($(".pw-progress")).not.toBeNull(); // until status says otherwise
    model.set("status", { state: "idle", request_id: 1, done: 0, total: 0, message: "" });
    expect($(".pw-progress")).toBeNull();
  });

  it("does not let a superseded request's exact values replace a newer view", () => {
    cell(2, 3).click(); // request 1
    model.set("view", pythonView(1, { exact: false }));
    cell(0, 0).click(); // request 2
    model.set("view", pythonView(1, { exact: true, title: "late" }));
    expect($(".pw-estimate")).not.toBeNull();
    expect($(".pw-title").textContent).toBe("heads");
  });

  it("wraps a long note", () => {
    // jsdom does no layout, so check the rule itself (vitest stubs CSS imports).
    const css = readFileSync(join(import.meta.dirname, "../src/widget.css"), "utf8");
    const rule = css.match(/\.pw-note\s*\{([^}]*)\}/)[1];
    expect(rule).toMatch(/white-space:\s*pre-line/);
    expect(rule).toMatch(/overflow-wrap:\s*anywhere/);
  });
});
