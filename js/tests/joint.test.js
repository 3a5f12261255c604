// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { createJointBox, jointSummary, updateJointBox } from "../src/joint.js";

const joint = {
  cells: ["head_out L1 H2 @13", "head_out L3 H0 @13"],
  singles: [0.4, 0.24],
  sum_of_singles: 0.64,
  joint: 0.9123,
  metric: "logit_diff_norm",
};

const texts = (box, selector) => [...box.querySelectorAll(selector)].map((e) => e.textContent);

describe("joint result box", () => {
  it("summarises in one sentence with three decimals", () => {
    expect(jointSummary(joint)).toBe("Together: 0.912 (sum of singles 0.640)");
    expect(jointSummary({ ...joint, joint: null })).toBe("Together: NaN (sum of singles 0.640)");
  });

  it("tabulates each cell alone, their sum and all together", () => {
    const box = createJointBox();
    updateJointBox(box, joint);
    expect(box.classList.contains("pw-joint-result")).toBe(true);
    expect(box.getAttribute("role")).toBe("status");
    expect(box.firstChild.textContent).toBe("Together: 0.912 (sum of singles 0.640)");
    expect(texts(box, "thead th")).toEqual(["cell", "logit_diff_norm"]);
    expect(texts(box, "tbody th, tfoot th")).toEqual([
      "head_out L1 H2 @13",
      "head_out L3 H0 @13",
      "sum of singles",
      "all together",
    ]);
    expect(texts(box, "td")).toEqual(["0.400", "0.240", "0.640", "0.912"]);
    expect([...box.querySelectorAll("tbody th, tfoot th")].every((th) => th.getAttribute("scope") === "row")).toBe(
      true,
    );
  });

  it("empties the same element, so the live region outlives each result", () => {
    const box = createJointBox();
    updateJointBox(box, joint);
    updateJointBox(box, undefined);
    expect(box.classList.contains("pw-joint-result")).toBe(false);
    expect(box.childNodes).toHaveLength(0);
    expect(box.getAttribute("role")).toBe("status");
  });
});
