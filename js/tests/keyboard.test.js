import { describe, expect, it } from "vitest";
import { keyAction } from "../src/keyboard.js";

describe("keyAction", () => {
  it("moves with arrows and clamps at the edges", () => {
    expect(keyAction(1, 1, "ArrowUp", 4, 5)).toEqual({ type: "focus", row: 0, col: 1 });
    expect(keyAction(1, 1, "ArrowDown", 4, 5)).toEqual({ type: "focus", row: 2, col: 1 });
    expect(keyAction(1, 1, "ArrowLeft", 4, 5)).toEqual({ type: "focus", row: 1, col: 0 });
    expect(keyAction(1, 1, "ArrowRight", 4, 5)).toEqual({ type: "focus", row: 1, col: 2 });
    expect(keyAction(0, 0, "ArrowUp", 4, 5)).toEqual({ type: "focus", row: 0, col: 0 });
    expect(keyAction(3, 4, "ArrowRight", 4, 5)).toEqual({ type: "focus", row: 3, col: 4 });
    expect(keyAction(3, 4, "ArrowDown", 4, 5)).toEqual({ type: "focus", row: 3, col: 4 });
  });

  it("jumps to row ends with Home/End and column ends with PageUp/PageDown", () => {
    expect(keyAction(2, 3, "Home", 4, 5)).toEqual({ type: "focus", row: 2, col: 0 });
    expect(keyAction(2, 3, "End", 4, 5)).toEqual({ type: "focus", row: 2, col: 4 });
    expect(keyAction(2, 3, "PageUp", 4, 5)).toEqual({ type: "focus", row: 0, col: 3 });
    expect(keyAction(2, 3, "PageDown", 4, 5)).toEqual({ type: "focus", row: 3, col: 3 });
  });

  it("maps Enter, Space and Escape to actions", () => {
    expect(keyAction(2, 3, "Enter", 4, 5)).toEqual({ type: "drill", row: 2, col: 3 });
    expect(keyAction(2, 3, " ", 4, 5)).toEqual({ type: "toggle", row: 2, col: 3 });
    expect(keyAction(2, 3, "Escape", 4, 5)).toEqual({ type: "back" });
  });

  it("ignores other keys so they reach the notebook", () => {
    expect(keyAction(0, 0, "a", 4, 5)).toBeNull();
    expect(keyAction(0, 0, "Tab", 4, 5)).toBeNull();
  });
});
