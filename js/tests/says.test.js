// @vitest-environment jsdom
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import widget from "../src/index.js";
import { createSaysBox, saysSummary, updateSaysBox } from "../src/says.js";
import { fakeModel, initialState } from "./fake-model.js";

// view.says as Python sends it (view.says_box): L3H1 at the last token, on the bundled model's IOI example.
const says = {
  cells: ["head_out L3 H1 @13"],
  direction: "denoise",
  pair: 0,
  max_new_tokens: 5,
  clean: "Mary drink drink drink drink",
  corrupt: "John Sarah Sarah Sarah Sarah",
  patched: "Mary drink drink drink drink",
};

const lines = (root) => [...root.querySelectorAll(".pw-says-line")].map((l) => l.textContent);

describe("what the model says box", () => {
  it("says which cells took which run's values, then the three continuations", () => {
    expect(saysSummary(says)).toBe(
      "What the model says (pair 0, 5 new tokens) when head_out L3 H1 @13 takes the clean run's values in the corrupted run:",
    );
    const box = createSaysBox();
    updateSaysBox(box, says);
    expect(box.classList.contains("pw-says-result")).toBe(true);
    expect(box.getAttribute("role")).toBe("status");
    expect(lines(box)).toEqual([
      "clean: Mary drink drink drink drink",
      "corrupted: John Sarah Sarah Sarah Sarah",
      "patched: Mary drink drink drink drink",
    ]);
    expect(box.querySelector(".pw-says-patched .pw-says-text").textContent).toBe(says.patched);
    updateSaysBox(box, undefined);
    expect(box.childNodes).toHaveLength(0);
    expect(box.classList.contains("pw-says-result")).toBe(false);
  });

  it("counts a circuit's cells past the first four, lists them all on hover, and says the noise direction", () => {
    const cells = ["head_out L3 H1", "mlp_out L3", "embed", "mlp_out L0", "head_out L0 H3", "mlp_out L2"];
    const circuit = { ...says, cells, direction: "noise", pair: 1, max_new_tokens: 1 };
    expect(saysSummary(circuit)).toBe(
      "What the model says (pair 1, 1 new token) when 6 cells, head_out L3 H1, mlp_out L3, embed, mlp_out L0 " +
        "and 2 more take the corrupted run's values in the clean run:",
    );
    const box = createSaysBox();
    updateSaysBox(box, circuit);
    expect(box.querySelector(".pw-says-summary").title).toBe(cells.join("\n"));
  });

  it("says a circuit run on its own is the clean run with every other node corrupted", () => {
    const alone = { ...says, cells: ["embed", "head_out L3 H1"], direction: "noise", alone: true };
    expect(saysSummary(alone)).toBe(
      "What the circuit says on its own (pair 0, 5 new tokens): the clean run with every node but 2 cells, " +
        "embed, head_out L3 H1 given the corrupted run's value:",
    );
  });
});

describe("widget: What does it say?", () => {
  let model;
  let el;
  const $ = (selector) => el.querySelector(selector);
  const shiftClick = (target) => target.dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true }));
  const cell = (r, c) => $(`.pw-cell[data-row="${r}"][data-col="${c}"]`);

  beforeEach(() => {
    model = fakeModel(initialState());
    el = document.createElement("div");
    document.body.replaceChildren(el);
    widget.render({ model, el });
  });

  it("sends the selected cells, and draws the three lines of the answer under the grid", () => {
    shiftClick(cell(3, 4));
    $(".pw-says").click();
    expect(model.sent).toEqual([{ type: "says", cells: [{ panel: "resid_pre", row: 3, col: 4 }], request_id: 1 }]);
    expect($(".pw-says-result")).toBeNull();
    model.set("view", { ...model.get("view"), request_id: 1, says });
    model.set("status", { state: "idle", request_id: 1, done: 0, total: 0, message: "" });
    expect(lines($(".pw-says-result"))).toEqual([
      "clean: Mary drink drink drink drink",
      "corrupted: John Sarah Sarah Sarah Sarah",
      "patched: Mary drink drink drink drink",
    ]);
    expect(
      $(".pw-says-result").compareDocumentPosition($(".pw-panels")) & Node.DOCUMENT_POSITION_PRECEDING,
    ).toBeTruthy();
    model.set("view", { ...model.get("view"), request_id: 1, says: undefined }); // the next view, without it
    expect($(".pw-says-result")).toBeNull();
  });

  it("asks about the circuit a level found, and shows Python's refusal as an error", () => {
    expect($(".pw-says-circuit")).toBeNull();
    model.set("view", { ...model.get("view"), circuit_cells: 8 });
    expect($(".pw-says-circuit").textContent).toBe("What does the circuit say?");
    $(".pw-says-circuit").click();
    expect(model.sent).toEqual([{ type: "says", cells: "circuit", request_id: 1 }]);
    // A refusal only the click finds (a circuit run alone on pairs whose spans differ in length)
    const message = "alone=True replaces each node position by position with its corrupted-run value, and ...";
    model.set("status", { state: "error", request_id: 1, done: 0, total: 0, message });
    expect($(".pw-error").textContent).toContain(message);
    expect($(".pw-says-result")).toBeNull();
    expect($(".pw-grid")).not.toBeNull();
  });

  it("ignores an answer that a newer request superseded", () => {
    shiftClick(cell(1, 1));
    $(".pw-says").click(); // request 1
    cell(0, 0).click(); // request 2
    model.set("view", { ...model.get("view"), request_id: 1, says });
    expect($(".pw-says-result")).toBeNull();
  });
});

// What Python sends where pw.generate would refuse (tests/test_protocol.py writes it): a noise() corruption's
// explorer (view.disabled.says) and one head's level, whose attention pattern panel says why (says_refused).
const contract = JSON.parse(readFileSync(join(import.meta.dirname, "fixtures", "contract.json"), "utf8"));

describe("widget: What does it say? where pw.generate would refuse", () => {
  let model;
  let el;
  const $ = (selector) => el.querySelector(selector);
  const shiftClick = (target) => target.dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true }));
  const mount = (state) => {
    model = fakeModel(structuredClone(state));
    el = document.createElement("div");
    document.body.replaceChildren(el);
    widget.render({ model, el });
  };
  const expectRefused = (button, why) => {
    expect(button.getAttribute("aria-disabled")).toBe("true");
    expect(button.disabled).toBe(false); // Tab reaches it, and reads why
    expect(button.title).toBe(why);
    expect(button.getAttribute("aria-description")).toBe(why);
    expect(button.parentElement.querySelector(".pw-says-refused").textContent).toBe(why);
  };

  it("with a noise() corruption: says pw.generate's reason on the button, sends nothing, and the grid works on", () => {
    mount(contract.noise);
    const why = contract.noise.view.disabled.says;
    expect(why).toContain("noise() corruption has no corrupted prompt to continue");
    shiftClick($('.pw-cell[data-row="2"][data-col="3"]'));
    expect($(".pw-selection-count").textContent).toBe("1 cell selected");
    expectRefused($(".pw-says"), why);
    $(".pw-says").focus();
    expect(document.activeElement).toBe($(".pw-says"));
    $(".pw-says").click();
    expect(model.sent).toEqual([]);
    $(".pw-joint").click(); // the other buttons, and the grid, still ask
    $('.pw-cell[data-row="1"][data-col="3"]').click();
    expect(model.sent.map((m) => m.type)).toEqual(["joint", "drill"]);
    model.set("view", { ...model.get("view"), request_id: 2, circuit_cells: 3 }); // nor about a circuit
    expectRefused($(".pw-says-circuit"), why);
    $(".pw-says-circuit").click();
    expect(model.sent).toHaveLength(2);
  });

  it("with the attention pattern's cells selected: says why, in Python's words; other cells can ask", () => {
    mount(contract.head);
    const why = contract.head.view.panels.find((p) => p.id === "pattern").says_refused;
    expect(why).toContain("attn_pattern");
    shiftClick($('.pw-grid[data-panel="components"] .pw-cell[data-row="3"][data-col="4"]'));
    expect($(".pw-says").hasAttribute("aria-disabled")).toBe(false);
    expect($(".pw-says-refused")).toBeNull();
    shiftClick($('.pw-grid[data-panel="pattern"] .pw-cell[data-row="4"][data-col="1"]'));
    expectRefused($(".pw-says"), why);
    $(".pw-says").click();
    expect(model.sent).toEqual([]);
    shiftClick($('.pw-grid[data-panel="pattern"] .pw-cell[data-row="4"][data-col="1"]')); // unselected again
    $(".pw-says").click();
    expect(model.sent).toEqual([{ type: "says", cells: [{ panel: "components", row: 3, col: 4 }], request_id: 3 }]);
  });
});
