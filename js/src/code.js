import { h } from "./dom.js";

// "Copy code" (issue 39, item 6): the Python that computes the level on show (view.code), to the
// clipboard where the page may write it (a secure context: localhost, https), else shown selected
// in a box to copy by hand. "Show code" opens it for reading either way.
export function renderCode(code) {
  if (!code) return null;
  const box = h("textarea", { class: "pw-code-text", readonly: true, rows: 8, spellcheck: "false" }, code);
  const details = h("details", { class: "pw-code" }, [h("summary", {}, "Show code"), box]);
  const said = h("span", { class: "pw-code-said", role: "status" });
  const fallback = () => {
    details.open = true;
    box.focus();
    box.select();
    said.textContent = "Select and copy the code below (this page may not write to the clipboard).";
  };
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(code);
      said.textContent = "Copied: paste it into a cell to compute this view again.";
    } catch {
      fallback();
    }
  };
  const button = h("button", { type: "button", class: "pw-copy-code", "data-pw-key": "copy-code", onclick: copy }, [
    "Copy code",
  ]);
  return h("div", { class: "pw-code-bar" }, [button, said, details]);
}
