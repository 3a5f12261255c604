import { renderBreadcrumb } from "./breadcrumb.js";
import { renderCode } from "./code.js";
import { validVmax } from "./colors.js";
import { renderContext } from "./context.js";
import { renderControls } from "./controls.js";
import { h, replaceContent } from "./dom.js";
import { createJointBox, updateJointBox } from "./joint.js";
import { renderPanel } from "./panel.js";
import { renderStatus } from "./progress.js";
import { PROTOCOL } from "./protocol.js";
import { colourRange, pathMaxima } from "./range.js";
import { chooseView, createRequests, currentStatus, seedRequestId } from "./requests.js";
import { createSaysBox, renderSaysCircuit, updateSaysBox } from "./says.js";
import { renderSelectionBar, saysRefusal, toggleCell } from "./selection.js";
import { createTooltip } from "./tooltip.js";

function render({ model, el }) {
  // Per view, not per model: anywidget gives initialize() and each render()
  // different model proxies, so no state can be shared between them. Seeding
  // from the synced ids keeps two views of one widget (or a reload) consistent.
  const requests = createRequests((m) => model.send(m), seedRequestId(model.get("view"), model.get("status")));
  const focus = new Map(); // panel id -> {row, col}, so the roving cell survives re-renders
  let shown = chooseView(model.get("view"), null, requests.latest());
  let maxima = pathMaxima([], shown); // the largest |value| of each level along the drill-down
  let circuitLevel = "nodes"; // what Find circuit finds: nodes or edges (the page's choice, kept across redraws)

  const header = h("div", { class: "pw-header" });
  const controls = h("div", { class: "pw-controls" });
  const status = h("div", { class: "pw-status" });
  const body = h("div", { class: "pw-body" });
  const jointBox = createJointBox(); // under the panels but outside body, which selection changes rebuild
  const saysBox = createSaysBox(); // what the model says under a patch, beside the joint box
  // Lumino stops its shortcut lookup here, so arrows, Enter and Escape in the
  // grid are not taken as notebook commands.
  // data-protocol: the protocol this page speaks (patchwidget doctor checks the bundle carries this package's).
  const root = h("div", { class: "patchwidget", "data-lm-suppress-shortcuts": "true", "data-protocol": PROTOCOL }, [
    header,
    controls,
    status,
    body,
    jointBox,
    saysBox,
  ]);
  const tooltip = createTooltip(root);
  el.replaceChildren(root);

  const selection = () => model.get("selection") ?? [];
  const vmax = () => validVmax(model.get("vmax"));
  const range = () => colourRange(vmax(), shown?.normalized, maxima);

  function request(message) {
    requests.send(message);
    renderStatusSection(); // an error or progress of an older request is now stale
  }

  function setTrait(name, value) {
    model.set(name, value);
    model.save_changes();
  }

  function back() {
    const level = shown?.level ?? 0;
    if (level <= 0) return false;
    request({ type: "back", level: level - 1 });
    return true;
  }

  function panelActions(panel) {
    return {
      drill: (row, col) => request({ type: "drill", panel: panel.id, row, col }),
      toggle: (row, col) => setTrait("selection", toggleCell(selection(), { panel: panel.id, row, col })),
      focus: (row, col) => focus.set(panel.id, { row, col }),
      back,
    };
  }

  function renderHeader() {
    replaceContent(header, [
      renderContext(model.get("context"), tooltip),
      renderBreadcrumb(model.get("breadcrumb") ?? [], (level) => request({ type: "back", level })),
      shown?.title ? h("div", { class: "pw-title" }, shown.title) : null,
    ]);
  }

  function renderControlsSection() {
    const current = model.get("controls") ?? {};
    replaceContent(
      controls,
      renderControls(current, {
        vmax: vmax(),
        autoMax: colourRange(null, shown?.normalized, maxima).vmax,
        onSet: (key, value) => {
          if (current[key] !== value) request({ type: "set", key, value });
        },
        onVmax: (value) => setTrait("vmax", value),
        onFind: (target) => request({ type: "find", target }),
        onCircuit: (target, level) => request({ type: "circuit", target, level }),
        circuitLevel,
        onCircuitLevel: (level) => {
          circuitLevel = level;
        },
        disabled: shown?.disabled ?? {},
      }),
    );
  }

  function renderStatusSection() {
    const current = currentStatus(model.get("status"), requests.latest());
    replaceContent(status, [
      renderStatus(current, () => model.send({ type: "cancel", request_id: requests.latest() })),
    ]);
  }

  function renderPanels() {
    const panels = shown?.panels ?? [];
    if (panels.length === 0) return h("div", { class: "pw-empty" }, "Nothing to show yet.");
    const cells = selection();
    const { vmax: shared, note } = range();
    // A circuit's edges (kind "edges") are drawn over the diagram they name, not as a panel of their own.
    const overlays = new Map(panels.filter((p) => p.kind === "edges").map((p) => [p.on, p]));
    const edgesOver = (panel) => {
      const edges = overlays.get(panel.id);
      return edges && { panel: edges, focus: focus.get(edges.id), actions: panelActions(edges) };
    };
    return h("div", { class: "pw-panels" }, [
      h("div", { class: "pw-range-note", role: "note" }, note),
      ...panels
        .filter((panel) => panel.kind !== "edges")
        .map((panel) =>
          renderPanel(panel, {
            vmax: shared,
            exact: shown.exact !== false,
            focus: focus.get(panel.id),
            selection: cells.filter((c) => c.panel === panel.id),
            nPairs: model.get("controls")?.n_pairs,
            tooltip,
            actions: panelActions(panel),
            edges: edgesOver(panel),
          }),
        ),
    ]);
  }

  function renderBody() {
    tooltip.hide(); // its cell may be about to disappear
    replaceContent(body, [
      shown?.note ? h("div", { class: "pw-note", role: "note" }, shown.note) : null,
      renderCode(shown?.code),
      renderSaysCircuit(shown?.circuit_cells, () => request({ type: "says", cells: "circuit" }), shown?.disabled?.says),
      renderSelectionBar(selection(), {
        onJoint: () => request({ type: "joint", cells: selection() }),
        onKeep: () => request({ type: "keep", cells: selection() }),
        onSays: () => request({ type: "says", cells: selection() }),
        onClear: () => setTrait("selection", []),
        saysRefused: saysRefusal(shown, selection()),
      }),
      renderPanels(),
    ]);
  }

  function onView() {
    const view = model.get("view");
    requests.observe(view?.request_id ?? 0);
    const next = chooseView(view, shown, requests.latest());
    if (next === shown) return;
    shown = next;
    maxima = pathMaxima(maxima, shown);
    renderHeader();
    renderControlsSection();
    renderBody();
    updateJointBox(jointBox, shown?.joint);
    updateSaysBox(saysBox, shown?.says);
  }

  function onStatus() {
    requests.observe(model.get("status")?.request_id ?? 0);
    renderStatusSection();
  }

  function onControls() {
    renderControlsSection();
    renderBody(); // the pair on show changes the values drawn
  }

  function onVmaxChange() {
    renderControlsSection();
    renderBody();
  }

  const listeners = [
    ["change:view", onView],
    ["change:breadcrumb", renderHeader],
    ["change:context", renderHeader],
    ["change:controls", onControls],
    ["change:status", onStatus],
    ["change:vmax", onVmaxChange],
    ["change:selection", renderBody],
  ];
  for (const [event, fn] of listeners) model.on(event, fn);

  renderHeader();
  renderControlsSection();
  renderStatusSection();
  renderBody();
  updateJointBox(jointBox, shown?.joint);
  updateSaysBox(saysBox, shown?.says);

  return () => {
    for (const [event, fn] of listeners) model.off(event, fn);
  };
}

export default { render };
