// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from "vitest";
import { renderCode } from "../src/code.js";

const CODE = "import patchwidget as pw\nresid_pre = pw.patch(model, **prompts)\n";

afterEach(() => vi.unstubAllGlobals());

describe("Copy code", () => {
  it("writes the view's code to the clipboard", async () => {
    const writeText = vi.fn(() => Promise.resolve());
    vi.stubGlobal("navigator", { clipboard: { writeText } });
    const bar = renderCode(CODE);
    document.body.replaceChildren(bar);
    bar.querySelector(".pw-copy-code").click();
    await vi.waitFor(() => expect(bar.querySelector(".pw-code-said").textContent).toContain("Copied"));
    expect(writeText).toHaveBeenCalledWith(CODE);
  });

  it("shows the code selected where the page may not write to the clipboard", async () => {
    vi.stubGlobal("navigator", {});
    const bar = renderCode(CODE);
    document.body.replaceChildren(bar);
    bar.querySelector(".pw-copy-code").click();
    await vi.waitFor(() => expect(bar.querySelector("details").open).toBe(true));
    const box = bar.querySelector("textarea");
    expect(box.value).toBe(CODE);
    expect(document.activeElement).toBe(box);
    expect(box.selectionEnd - box.selectionStart).toBe(CODE.length);
  });

  it("offers nothing without code", () => {
    expect(renderCode(undefined)).toBeNull();
  });
});
