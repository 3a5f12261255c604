import { h } from "./dom.js";

const GAP = 4; // px between the cell and the tooltip
const MARGIN = 2; // px kept from the visible box's edges

// Does this element cut off what overflows it? Overflow other than visible, and paint
// containment (contain: paint, strict or content; content-visibility: auto), both clip.
function clips(style) {
  const overflow = `${style.overflowX} ${style.overflowY}`;
  return (
    /hidden|clip|auto|scroll/.test(overflow) ||
    /paint|strict|content/.test(style.contain ?? "") ||
    style.contentVisibility === "auto"
  );
}

// The parent in the flattened tree: across shadow roots (marimo draws the widget in one).
function parentOf(el) {
  return el.parentElement ?? (el.getRootNode() instanceof ShadowRoot ? el.getRootNode().host : null);
}

// The part of the viewport where an element inside `el` can be seen: the viewport, cut by every
// ancestor that clips (JupyterLab's output area does), in viewport coordinates.
export function visibleBox(el) {
  const view = el.ownerDocument.defaultView;
  const box = { left: 0, top: 0, right: view.innerWidth, bottom: view.innerHeight };
  for (let a = parentOf(el); a && a !== el.ownerDocument.documentElement; a = parentOf(a)) {
    if (!clips(view.getComputedStyle(a))) continue;
    const r = a.getBoundingClientRect();
    box.left = Math.max(box.left, r.left);
    box.top = Math.max(box.top, r.top);
    box.right = Math.min(box.right, r.right);
    box.bottom = Math.min(box.bottom, r.bottom);
  }
  return box;
}

// Where a tooltip of size (w, h) goes for a cell at `a` inside `box` (all viewport coordinates):
// below the cell, or above it where below does not fit, or on whichever side has more room; centred
// on the cell, moved sideways to stay inside the box.
export function placeTooltip(a, w, h, box) {
  const below = a.bottom + GAP;
  const above = a.top - GAP - h;
  let top = below;
  if (below + h > box.bottom - MARGIN) {
    top = above >= box.top + MARGIN || a.top - box.top > box.bottom - a.bottom ? above : below;
  }
  top = Math.max(box.top + MARGIN, Math.min(top, box.bottom - MARGIN - h));
  const centred = a.left + a.width / 2 - w / 2;
  const left = Math.max(box.left + MARGIN, Math.min(centred, box.right - MARGIN - w));
  return { left, top };
}

// One tooltip per widget, positioned inside the root (position: absolute, not fixed: notebook front
// ends put transformed or paint-contained ancestors around outputs, which would move or cut a fixed
// element), and placed inside what the notebook shows of the page (visibleBox).
export function createTooltip(root) {
  const el = h("div", { class: "pw-tooltip", role: "tooltip", hidden: true });
  root.append(el);
  return {
    show(anchor, lines) {
      el.replaceChildren(...lines.map((line) => h("div", {}, line)));
      const box = visibleBox(root);
      el.style.maxWidth = `${Math.max(160, Math.min(420, box.right - box.left - 2 * MARGIN))}px`;
      el.style.left = "0px";
      el.style.top = "0px";
      el.hidden = false;
      const size = el.getBoundingClientRect();
      const at = placeTooltip(anchor.getBoundingClientRect(), size.width, size.height, box);
      const r = root.getBoundingClientRect();
      el.style.left = `${at.left - r.left}px`;
      el.style.top = `${at.top - r.top}px`;
    },
    hide() {
      el.hidden = true;
    },
  };
}
