// Stand-in for anywidget's model proxy: set() fires change events
// synchronously, as Backbone does, for both front-end and "Python" updates.
export function fakeModel(state) {
  const listeners = new Map();
  const model = {
    sent: [],
    saves: 0,
    get: (name) => state[name],
    set(name, value) {
      state[name] = value;
      for (const fn of [...(listeners.get(`change:${name}`) ?? [])]) fn();
    },
    on(event, fn) {
      if (!listeners.has(event)) listeners.set(event, new Set());
      listeners.get(event).add(fn);
    },
    off(event, fn) {
      listeners.get(event)?.delete(fn);
    },
    send(message) {
      model.sent.push(message);
    },
    save_changes() {
      model.saves += 1;
    },
    listenerCount: () => [...listeners.values()].reduce((n, s) => n + s.size, 0),
  };
  return model;
}

export function panel4x5(overrides = {}) {
  return {
    id: "resid_pre",
    title: "resid_pre",
    row_dim: "layer",
    col_dim: "pos",
    rows: ["L0", "L1", "L2", "L3"],
    cols: ["When", "Mary (1)", "and", "John", "Mary (2)"],
    values: [
      [0.1, -0.2, 0.3, null, 0.5],
      [0, 1, -1, 0.25, 0.75],
      [0.01, 0.02, 0.03, 0.04, 0.05],
      [0.734, -0.5, 0.2, 0.1, 0.9],
    ],
    clickable: true,
    diverging: true,
    ...overrides,
  };
}

export function initialState(overrides = {}) {
  return {
    view: {
      request_id: 0,
      level: 0,
      title: "resid_pre · denoise · logit_diff · normalised (clean 1, corrupted 0)",
      normalized: true,
      note: "",
      exact: true,
      panels: [panel4x5()],
    },
    breadcrumb: [{ label: "resid_pre" }],
    controls: {
      site: "resid_pre",
      sites: [
        { name: "resid_pre", group: "residual", label: "resid_pre" },
        { name: "attn_out", group: "attention", label: "attn out" },
        { name: "heads", group: "attention", label: "heads" },
        { name: "mlp_out", group: "mlp", label: "mlp out" },
      ],
      direction: "denoise",
      metric: "logit_diff",
      directions: [
        { value: "denoise", label: "denoise (clean into corrupt run)" },
        { value: "noise", label: "noise (corrupt into clean run)" },
      ],
      metrics: ["logit_diff", "prob", "kl"].map((m) => ({ value: m, label: m })),
      scale: "normalized",
      scales: [
        { value: "normalized", label: "normalised (clean 1, corrupted 0)" },
        { value: "raw", label: "raw metric" },
      ],
      methods: [
        { value: "exact", label: "exact patching" },
        { value: "attribution", label: "attribution (fast estimate)" },
      ],
      pair: "mean",
      n_pairs: 1,
      method: "exact",
      target: 0.8,
    },
    status: { state: "idle", request_id: 0, done: 0, total: 0, message: "" },
    vmax: null,
    selection: [],
    ...overrides,
  };
}
