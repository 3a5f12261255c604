// Tiny element builder: the widget is rebuilt from synced state on every
// change, so plain DOM construction keeps the bundle free of a framework.
export function h(tag, attrs = {}, children = []) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...[children].flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// Rebuilding a section must not strand keyboard users: if focus was inside,
// move it to the element with the same data-pw-key in the new content, or to
// the roving cell of the first grid when that element no longer exists
// (e.g. after a drill-down replaced the panels).
export function replaceContent(container, children) {
  const active = container.ownerDocument.activeElement;
  const hadFocus = active !== null && container.contains(active);
  const key = hadFocus ? active.dataset.pwKey : undefined;
  container.replaceChildren(...children.filter(Boolean));
  if (!hadFocus) return;
  const same = [...container.querySelectorAll("[data-pw-key]")].find((e) => e.dataset.pwKey === key);
  quietFocus(same ?? container.querySelector('.pw-cell[tabindex="0"]'));
}

// Focus the widget moves itself (after a re-render) keeps the keyboard in place but is not the user
// pointing at a cell: focus handlers see data-pw-quiet and show no tooltip for it.
export function quietFocus(el) {
  if (!el) return;
  el.dataset.pwQuiet = "";
  try {
    el.focus({ preventScroll: true });
  } finally {
    delete el.dataset.pwQuiet;
  }
}
