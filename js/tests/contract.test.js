// @vitest-environment jsdom
// The widget on the traits Python really produced (fixtures/contract.json, written and checked by
// tests/test_protocol.py): it draws them, and every message it sends is one the protocol names.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import widget from "../src/index.js";
import { fakeModel } from "./fake-model.js";

const contract = JSON.parse(readFileSync(join(import.meta.dirname, "fixtures", "contract.json"), "utf8"));

function mount(state) {
  const model = fakeModel(structuredClone(state));
  const el = document.createElement("div");
  document.body.replaceChildren(el);
  widget.render({ model, el });
  return { model, el };
}

function checkMessage(message) {
  const keys = contract.messages[message.type];
  expect(keys, `unknown message type ${message.type}`).toBeDefined();
  expect(Object.keys(message).sort()).toEqual(["type", "request_id", ...keys].sort());
  expect(Number.isInteger(message.request_id)).toBe(true);
}

describe("contract with the Python side", () => {
  it("draws the top level Python sent and asks for a drill-down in the protocol's words", () => {
    const { model, el } = mount(contract.top);
    const panel = contract.top.view.panels[0];
    expect(el.querySelectorAll(".pw-cell")).toHaveLength(panel.rows.length * panel.cols.length);
    expect(el.querySelector(".pw-grid").getAttribute("aria-label")).toBe(panel.title);
    el.querySelector('.pw-cell[data-row="2"][data-col="4"]').click();
    const drill = model.sent.at(-1);
    checkMessage(drill);
    expect(drill).toMatchObject({ type: "drill", panel: panel.id, row: 2, col: 4 });
  });

  it("offers exactly the choices Python sent", () => {
    const { el } = mount(contract.top);
    for (const key of ["direction", "metric", "method"]) {
      const options = [...el.querySelectorAll(`select.pw-${key} option`)].map((o) => o.textContent);
      expect(options).toEqual(contract.top.controls[`${key}s`].map((c) => c.label));
    }
  });

  it("draws the drilled level, and its breadcrumb, cancel and set messages follow the protocol", () => {
    const { model, el } = mount(contract.drilled);
    const panel = contract.drilled.view.panels[0];
    expect(el.querySelectorAll(".pw-cell")).toHaveLength(panel.rows.length * panel.cols.length);
    const crumbs = [...el.querySelectorAll(".pw-breadcrumb button")];
    expect(crumbs.map((b) => b.textContent)).toEqual(contract.drilled.breadcrumb.map((c) => c.label));
    crumbs[0].click();
    checkMessage(model.sent.at(-1));
    model.set("status", {
      ...contract.drilled.status,
      state: "running",
      request_id: model.sent.at(-1).request_id,
      total: 4,
    });
    el.querySelector(".pw-cancel").click();
    checkMessage(model.sent.at(-1));
    const select = el.querySelector("select.pw-direction");
    select.selectedIndex = 1;
    select.dispatchEvent(new Event("change"));
    checkMessage(model.sent.at(-1));
    expect(model.sent.at(-1)).toMatchObject({
      type: "set",
      key: "direction",
      value: contract.top.controls.directions[1].value,
    });
  });
});
