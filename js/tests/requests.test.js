import { describe, expect, it } from "vitest";
import { chooseView, createRequests, currentStatus, isStale, seedRequestId } from "../src/requests.js";

describe("createRequests", () => {
  it("stamps increasing ids starting at 1", () => {
    const sent = [];
    const requests = createRequests((m) => sent.push(m));
    requests.send({ type: "drill", panel: "p", row: 0, col: 1 });
    requests.send({ type: "back", level: 0 });
    expect(sent).toEqual([
      { type: "drill", panel: "p", row: 0, col: 1, request_id: 1 },
      { type: "back", level: 0, request_id: 2 },
    ]);
    expect(requests.latest()).toBe(2);
  });

  it("continues after ids seen in synced state or echoed back", () => {
    const sent = [];
    const requests = createRequests((m) => sent.push(m), seedRequestId({ request_id: 4 }, { request_id: 7 }));
    requests.observe(3);
    expect(requests.latest()).toBe(7);
    requests.observe(9);
    requests.send({ type: "set", key: "metric", value: "prob" });
    expect(sent[0].request_id).toBe(10);
  });

  it("seeds 0 from empty state", () => {
    expect(seedRequestId(undefined, {})).toBe(0);
  });
});

describe("stale filtering", () => {
  it("treats only ids below the latest sent as stale", () => {
    expect(isStale(2, 3)).toBe(true);
    expect(isStale(3, 3)).toBe(false);
    expect(isStale(4, 3)).toBe(false);
    expect(isStale(undefined, 0)).toBe(false);
  });

  it("keeps the shown view when a stale one arrives", () => {
    const shown = { request_id: 2 };
    expect(chooseView({ request_id: 1 }, shown, 3)).toBe(shown);
    const fresh = { request_id: 3 };
    expect(chooseView(fresh, shown, 3)).toBe(fresh);
  });

  it("draws a second view with the same id (an estimate, then its exact values)", () => {
    const estimate = { request_id: 3, exact: false };
    const exact = { request_id: 3, exact: true };
    expect(chooseView(estimate, { request_id: 2 }, 3)).toBe(estimate);
    expect(chooseView(exact, estimate, 3)).toBe(exact);
  });

  it("shows even a stale view when nothing is drawn yet", () => {
    const view = { request_id: 1 };
    expect(chooseView(view, null, 5)).toBe(view);
  });

  it("ignores status of older requests", () => {
    expect(currentStatus({ state: "error", request_id: 1 }, 2)).toBeNull();
    const status = { state: "running", request_id: 2 };
    expect(currentStatus(status, 2)).toBe(status);
    expect(currentStatus(undefined, 0)).toBeNull();
  });
});
