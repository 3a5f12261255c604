function clamp(v, lo, hi) {
  return Math.min(Math.max(v, lo), hi);
}

// Keyboard model of a grid panel (WAI-ARIA grid pattern), kept pure so the
// DOM code only applies the result. Returns null for keys the grid ignores,
// which must then reach the notebook untouched.
export function keyAction(row, col, key, nRows, nCols) {
  const focus = (r, c) => ({ type: "focus", row: clamp(r, 0, nRows - 1), col: clamp(c, 0, nCols - 1) });
  switch (key) {
    case "ArrowUp":
      return focus(row - 1, col);
    case "ArrowDown":
      return focus(row + 1, col);
    case "ArrowLeft":
      return focus(row, col - 1);
    case "ArrowRight":
      return focus(row, col + 1);
    case "Home":
      return focus(row, 0);
    case "End":
      return focus(row, nCols - 1);
    case "PageUp":
      return focus(0, col);
    case "PageDown":
      return focus(nRows - 1, col);
    case "Enter":
      return { type: "drill", row, col };
    case " ":
      return { type: "toggle", row, col };
    case "Escape":
      return { type: "back" };
    default:
      return null;
  }
}
