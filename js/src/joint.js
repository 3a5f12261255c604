import { h } from "./dom.js";
import { formatValue } from "./format.js";

function row(label, value) {
  return h("tr", {}, [h("th", { scope: "row" }, label), h("td", {}, formatValue(value, 3))]);
}

// The sentence comes first: the box is a live region, and a screen reader
// should hear the answer before the table it summarises.
export function jointSummary(joint) {
  return `Together: ${formatValue(joint.joint, 3)} (sum of singles ${formatValue(joint.sum_of_singles, 3)})`;
}

// joint: view.joint from Python, {cells, singles, sum_of_singles, joint, metric}.
export function renderJointTable(joint) {
  const cells = joint.cells ?? [];
  return [
    h("p", { class: "pw-joint-summary" }, jointSummary(joint)),
    // The metric heads the value column; a caption would wrap to the narrow table.
    h("table", { class: "pw-joint-table", "aria-label": "Joint patching" }, [
      h("thead", {}, h("tr", {}, [h("th", { scope: "col" }, "cell"), h("th", { scope: "col" }, joint.metric)])),
      h(
        "tbody",
        {},
        cells.map((label, i) => row(label, joint.singles?.[i])),
      ),
      h("tfoot", {}, [row("sum of singles", joint.sum_of_singles), row("all together", joint.joint)]),
    ]),
  ];
}

// One element for the widget's lifetime: a live region is announced reliably
// only when it exists before its content changes, so the box is this element
// gaining the pw-joint-result class and content rather than a new node.
export function createJointBox() {
  return h("div", { class: "pw-joint-live", role: "status" });
}

// Called only when a new view is drawn, so each result is announced once.
export function updateJointBox(box, joint) {
  box.classList.toggle("pw-joint-result", Boolean(joint));
  box.replaceChildren(...(joint ? renderJointTable(joint) : []));
}
