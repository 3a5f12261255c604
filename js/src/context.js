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

// What hovering an answer says: how the tokenizer splits it (issue 30: answers may be several tokens).
export function answerTokensLines(which, list) {
  if (!list) return null;
  const n = list.length;
  return [`${which}: ${n} token${n === 1 ? "" : "s"}`, list.map((t) => JSON.stringify(t)).join(" · ")];
}

// The answer in quotes; its tokens in the widget's tooltip on hover and on keyboard focus.
function answer(which, text, list, tooltip) {
  const lines = answerTokensLines(which, list);
  const el = h("span", { class: `pw-answer pw-answer-${which}`, tabindex: lines ? "0" : null }, JSON.stringify(text));
  if (!lines || !tooltip) return el;
  el.setAttribute("aria-label", `${JSON.stringify(text)}, ${lines.join(": ")}`);
  el.addEventListener("mouseenter", () => tooltip.show(el, lines));
  el.addEventListener("mouseleave", () => tooltip.hide());
  el.addEventListener("focus", () => tooltip.show(el, lines));
  el.addEventListener("blur", () => tooltip.hide());
  return el;
}

function joined(parts) {
  return parts.flatMap((part, i) => (i === 0 ? [part] : [" · ", part]));
}

// What is being patched, above the grid (issue 39, item 4): the model, the answers, the runs' own metric,
// and the pair's clean and corrupted prompts with the tokens the corruption changed marked.
// tooltip (tooltip.js) shows an answer's tokens on hover.
export function renderContext(ctx, tooltip) {
  if (!ctx?.clean) return null;
  const answers = h("span", { class: "pw-context-answers" }, [
    "answer ",
    answer("answer", ctx.answer, ctx.answer_tokens, tooltip),
    " vs ",
    answer("wrong", ctx.wrong, ctx.wrong_tokens, tooltip),
  ]);
  const facts = [ctx.model, pairText(ctx), answers, baselineText(ctx.baselines)].filter(Boolean);
  return h("div", { class: "pw-context", role: "group", "aria-label": "What is being patched" }, [
    h("div", { class: "pw-context-facts" }, joined(facts)),
    tokens("clean", ctx.clean),
    tokens("corrupted", ctx.corrupt),
  ]);
}
