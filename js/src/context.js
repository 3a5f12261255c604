import { h } from "./dom.js";

function tokens(side, list) {
  return h("div", { class: "pw-context-prompt" }, [
    h("span", { class: "pw-context-label" }, side),
    ...(list ?? []).map((t) => h(t.differs ? "mark" : "span", { class: "pw-token" }, t.text)),
  ]);
}

function pairText(ctx) {
  if (!(ctx.n_pairs > 1)) return null;
  return `pair ${ctx.pair} of ${ctx.n_pairs}`;
}

function baselineText(b) {
  if (!b) return null;
  const value = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));
  return `${b.metric}: clean ${value(b.clean)}, corrupted ${value(b.corrupt)}`;
}

// What is being patched, above the grid (issue 39, item 4): the model, the answers, the runs' own metric,
// and the pair's clean and corrupted prompts with the tokens the corruption changed marked.
export function renderContext(ctx) {
  if (!ctx?.clean) return null;
  const facts = [
    ctx.model,
    pairText(ctx),
    `answer ${JSON.stringify(ctx.answer)} vs ${JSON.stringify(ctx.wrong)}`,
    baselineText(ctx.baselines),
  ].filter(Boolean);
  return h("div", { class: "pw-context", role: "group", "aria-label": "What is being patched" }, [
    h("div", { class: "pw-context-facts" }, facts.join(" · ")),
    tokens("clean", ctx.clean),
    tokens("corrupted", ctx.corrupt),
  ]);
}
