import { validVmax } from "./colors.js";
import { h } from "./dom.js";
import { formatTick } from "./format.js";

const GROUPS = [
  ["residual", "Residual stream"],
  ["attention", "Attention"],
  ["mlp", "MLP"],
  ["lens", "Lens"],
];

function siteGroup(group, label, controls, onSet, why) {
  const sites = (controls.sites ?? []).filter((s) => s.group === group);
  if (sites.length === 0) return null;
  return h("div", { class: "pw-site-group", role: "tablist", "aria-label": label }, [
    h("span", { class: "pw-site-group-label", "aria-hidden": "true" }, label),
    ...sites.map((site) =>
      h(
        "button",
        {
          type: "button",
          role: "tab",
          class: "pw-site-tab",
          "aria-selected": String(site.name === controls.site),
          "data-site": site.name,
          "data-pw-key": `site:${site.name}`,
          disabled: Boolean(why),
          title: why,
          onclick: () => onSet("site", site.name),
        },
        site.label,
      ),
    ),
  ]);
}

// Options carry typed values (pair is "mean" or an int); mapping back by
// index avoids parsing the option's string value.
// `why`: the reason this control does not apply to the level on show (view.disabled); it is then
// disabled, and the reason is its tooltip and its accessible description.
function selectControl(key, label, options, current, onSet, why) {
  const select = h(
    "select",
    {
      class: `pw-${key}`,
      "data-pw-key": `ctl:${key}`,
      disabled: Boolean(why),
      title: why,
      "aria-description": why,
      onchange: (e) => onSet(key, options[e.target.selectedIndex][0]),
    },
    options.map(([value, text]) => h("option", { value: String(value), selected: value === current }, text)),
  );
  return h("label", { class: `pw-control${why ? " pw-disabled" : ""}`, title: why }, [h("span", {}, label), select]);
}

// Every choice comes from Python (controls.directions, .metrics, .scales, .methods: [{value, label}]).
function choices(list) {
  return (list ?? []).map((c) => [c.value, c.label]);
}

function pairOptions(nPairs) {
  return [["mean", "mean over pairs"], ...Array.from({ length: nPairs }, (_, i) => [i, `pair ${i}`])];
}

// vmax null means each panel scales to its own max |value|; unticking "auto"
// freezes the range at the current automatic value so colours do not jump.
function rangeControl(vmax, autoMax, onVmax) {
  const auto = vmax === null;
  const input = h("input", {
    type: "number",
    class: "pw-vmax",
    "data-pw-key": "ctl:vmax",
    "aria-label": "Colour range: maximum absolute value",
    min: "0",
    step: "any",
    value: formatTick(auto ? autoMax : vmax),
    disabled: auto,
    onchange: (e) => {
      const value = validVmax(e.target.valueAsNumber);
      if (value === null) e.target.value = formatTick(vmax ?? autoMax);
      else onVmax(value);
    },
  });
  const box = h("input", {
    type: "checkbox",
    class: "pw-vmax-auto",
    "data-pw-key": "ctl:vmax-auto",
    checked: auto,
    onchange: (e) => onVmax(e.target.checked ? null : (validVmax(input.valueAsNumber) ?? autoMax)),
  });
  return h("div", { class: "pw-control pw-range", role: "group", "aria-label": "Colour range" }, [
    h("span", {}, "Colour range ±"),
    h("label", {}, [box, " auto"]),
    input,
  ]);
}

const CIRCUIT_LEVELS = [
  { value: "nodes", label: "of nodes" },
  { value: "edges", label: "of edges" },
];

// What "Find circuit" finds, next to it: nodes or edges (controls.circuit_levels; `level`, the page's choice).
function circuitLevelControl(levels, level, onLevel) {
  const options = choices(levels ?? CIRCUIT_LEVELS);
  return h(
    "select",
    {
      class: "pw-circuit-level",
      "data-pw-key": "ctl:circuit-level",
      "aria-label": "Find a circuit of nodes or of edges",
      onchange: (e) => onLevel(options[e.target.selectedIndex][0]),
    },
    options.map(([value, text]) => h("option", { value, selected: value === level }, text)),
  );
}

// The searches: "Find circuit" (find_circuit: the nodes, or the edges, that do the target share of the task on
// their own) and "Find bottleneck" (find_bottleneck: the cells that, copied into the corrupted run, restore it),
// one target control for both (controls.target is Python's default).
function findControl(controls, onFind, onCircuit, circuit) {
  const target = controls.target;
  const input = h("input", {
    type: "number",
    class: "pw-target",
    "data-pw-key": "ctl:target",
    "aria-label": "Target: the share of the task the circuit does, or the bottleneck restores",
    min: "0.05",
    max: "1",
    step: "0.05",
    value: String(target ?? 0.9),
  });
  const run = (send) => () => {
    const value = input.valueAsNumber;
    if (Number.isFinite(value) && value > 0 && value <= 1) send(value);
    else input.value = String(target ?? 0.9);
  };
  const level = onCircuit ? circuitLevelControl(controls.circuit_levels, circuit.level, circuit.onLevel) : null;
  return h("div", { class: "pw-control pw-find", role: "group", "aria-label": "Find a circuit or a bottleneck" }, [
    onCircuit
      ? h(
          "button",
          {
            type: "button",
            class: "pw-circuit-button",
            "data-pw-key": "circuit",
            onclick: run((value) => onCircuit(value, level.value)),
          },
          "Find circuit",
        )
      : null,
    level,
    h(
      "button",
      { type: "button", class: "pw-find-button", "data-pw-key": "find", onclick: run(onFind) },
      "Find bottleneck",
    ),
    h("label", {}, ["target ", input]),
  ]);
}

// handlers: onSet(key, value) for protocol "set" requests, onVmax(value|null), onFind(target), onCircuit(target,
// level); circuitLevel: what Find circuit finds ("nodes" or "edges", the page's choice), onCircuitLevel(level).
// disabled: {control: reason} for the controls the level on show ignores (view.disabled).
export function renderControls(
  controls,
  { vmax, autoMax, onSet, onVmax, onFind, onCircuit, circuitLevel = "nodes", onCircuitLevel = () => {}, disabled = {} },
) {
  return [
    h(
      "div",
      { class: "pw-sites" },
      GROUPS.map(([group, label]) => siteGroup(group, label, controls, onSet, disabled.site)),
    ),
    h("div", { class: "pw-options" }, [
      selectControl(
        "direction",
        "Direction",
        choices(controls.directions),
        controls.direction,
        onSet,
        disabled.direction,
      ),
      selectControl("metric", "Metric", choices(controls.metrics), controls.metric, onSet, disabled.metric),
      controls.scales
        ? selectControl("scale", "Show", choices(controls.scales), controls.scale, onSet, disabled.scale)
        : null,
      selectControl("method", "Method", choices(controls.methods), controls.method, onSet, disabled.method),
      controls.n_pairs > 1
        ? selectControl("pair", "Pair", pairOptions(controls.n_pairs), controls.pair, onSet, disabled.pair)
        : null,
      rangeControl(vmax, autoMax, onVmax),
      onFind ? findControl(controls, onFind, onCircuit, { level: circuitLevel, onLevel: onCircuitLevel }) : null,
    ]),
  ];
}
