"""A deliberately plain activation-patching implementation, for checking the engine.

Plain PyTorch forward hooks on the Hugging Face model (no nnsight), one forward
pass per cell, one prompt at a time. It shares no code with ``patchwidget``:
module names, head splitting and the attention-pattern patch are written out
again here, so that an error in the engine cannot hide in a shared helper.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

# Module paths, written independently of patchwidget.sites.
NAMES = {
    "gpt2": dict(
        layers="transformer.h",
        attn="attn",
        mlp="mlp",
        ln2="ln_2",
        o="attn.c_proj",
        down="mlp.c_proj",
        qkv="attn.c_attn",
    ),
    "gpt_neox": dict(
        layers="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        ln2="post_attention_layernorm",
        o="attention.dense",
        down="mlp.dense_4h_to_h",
        qkv="attention.query_key_value",
    ),
    "llama": dict(
        layers="model.layers",
        attn="self_attn",
        mlp="mlp",
        ln2="post_attention_layernorm",
        o="self_attn.o_proj",
        down="mlp.down_proj",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
    ),
}
NAMES["qwen2"] = NAMES["mistral"] = NAMES["gemma"] = NAMES["granite"] = NAMES["llama"]
NAMES["gemma2"] = {**NAMES["llama"], "ln2": "pre_feedforward_layernorm"}  # its post-attention norm is on the branch
NAMES["cohere"] = {**NAMES["llama"], "ln2": None}  # attention and MLP read the same normed input
NAMES["gptj"] = dict(
    layers="transformer.h",
    attn="attn",
    mlp="mlp",
    ln2=None,
    o="attn.out_proj",
    down="mlp.fc_out",
    q="attn.q_proj",
    k="attn.k_proj",
    v="attn.v_proj",
)


def get(model, path):
    for part in path.split("."):
        model = getattr(model, part)
    return model


class Sizes:
    def __init__(self, config):
        self.h = config.num_attention_heads
        self.kv = getattr(config, "num_key_value_heads", None) or self.h
        self.d = config.hidden_size
        self.dh = getattr(config, "head_dim", None) or self.d // self.h


# --- the attention pattern, through a registered attention function --------

PATTERN = {"layer": None, "record": None, "replace": None}  # replace: {(head, qpos): row}


def ref_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scores = query @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = scores.softmax(-1)  # (batch, head, q, k)
    if module.layer_idx == PATTERN["layer"]:
        if PATTERN["record"] is not None:
            PATTERN["record"].append(weights[0].clone())
        if PATTERN["replace"]:
            weights = weights.clone()
            for (head, q), row in PATTERN["replace"].items():
                weights[0, head, q] = row
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("ref_eager", ref_attention)
AttentionMaskInterface.register("ref_eager", eager_mask)


# --- hooks -------------------------------------------------------------------


def site_hooks(model, site, layer, sizes, fn):
    """Register a hook that calls ``fn(act)`` on the site's activation
    ``(pos, unit, width)`` of the single prompt; ``fn`` may modify it in place."""
    names = NAMES[model.config.model_type]
    block = get(model, names["layers"])[layer]

    def per_unit(x, unit):  # (1, pos, n*unit) -> (pos, n, unit)
        return x[0].view(x.shape[1], -1, unit)

    def pre(module_path, reshape):
        def hook(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            fn(reshape(x))

        return (
            get(block, module_path).register_forward_pre_hook(hook, with_kwargs=True)
            if module_path
            else block.register_forward_pre_hook(hook, with_kwargs=True)
        )

    def post(module_path, pick, reshape):
        def hook(mod, args, output):
            fn(reshape(pick(output)))

        target = get(block, module_path) if module_path else block
        return target.register_forward_hook(hook)

    whole = lambda x: x[0].unsqueeze(1)  # (pos, 1, d_model)
    first = lambda out: out[0] if isinstance(out, tuple) else out
    if site == "resid_pre":
        return pre("", whole)
    if site == "resid_mid":
        return pre(names["ln2"], whole)
    if site == "resid_post":
        return post("", first, whole)
    if site == "attn_out":
        return post(names["attn"], lambda out: out[0], whole)
    if site == "mlp_out":
        return post(names["mlp"], first, whole)
    if site == "head_out":
        return pre(names["o"], lambda x: per_unit(x, sizes.dh))
    if site == "mlp_neuron":
        return pre(names["down"], lambda x: x[0].unsqueeze(-1))
    if site in ("head_q", "head_k", "head_v"):
        which = "qkv".index(site[-1])
        if "q" in names:
            return post(names["qkv"[which]], first, lambda x: per_unit(x, sizes.dh))
        if model.config.model_type == "gpt2":
            return post(
                names["qkv"], first, lambda x: per_unit(x[..., which * sizes.d : (which + 1) * sizes.d], sizes.dh)
            )
        # gpt_neox: per head [q | k | v]
        return post(
            names["qkv"], first, lambda x: per_unit(x, 3 * sizes.dh)[..., which * sizes.dh : (which + 1) * sizes.dh]
        )
    raise KeyError(site)


def run(model, ids, site=None, layer=None, fn=None, noise=None):
    """Last-position logits of one prompt, with an optional hook at (site, layer)
    and optional ``noise`` ``(pos, d_model)`` added to the token embeddings."""
    handles = [site_hooks(model, site, layer, Sizes(model.config), fn)] if site else []
    if noise is not None:
        embed = model.get_input_embeddings()
        handles.append(embed.register_forward_hook(lambda mod, args, out: out + noise))
    try:
        with torch.no_grad():
            return model(ids[None]).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()


def capture(model, ids, site, layer, noise=None):
    box = []
    run(model, ids, site, layer, lambda act: box.append(act.clone()), noise)
    return box[0]


def reference_patch(
    model, source_ids, target_ids, site, layers, units, positions, by_position, source_noise=None, target_noise=None
):
    """Logits of the target prompt with each cell patched from the source prompt.

    Returns a tensor ``(layer, unit, pos_group, vocab)`` where pos_group is one
    per position when ``by_position`` else a single group of all ``positions``.
    """
    groups = [[p] for p in positions] if by_position else [list(positions)]
    out = torch.empty(len(layers), len(units), len(groups), model.config.vocab_size)
    if site == "attn_pattern" and model.config.model_type == "gptj" and hasattr(model.transformer.h[0].attn, "_attn"):
        # GPT-J before transformers 5.24 computed attention in its own _attn, not through the interface
        return _reference_pattern_gptj(model, source_ids, target_ids, layers, units, groups, out)
    if site == "attn_pattern":
        model.set_attn_implementation("ref_eager")
        try:
            return _reference_pattern(model, source_ids, target_ids, layers, units, groups, out)
        finally:
            model.set_attn_implementation("eager")
    for i, layer in enumerate(layers):
        src = capture(model, source_ids, site, layer, source_noise)
        for j, unit in enumerate(units):
            for g, group in enumerate(groups):

                def write(act, unit=unit, group=group, src=src):
                    for p in group:
                        act[p, unit] = src[p, unit]

                out[i, j, g] = run(model, target_ids, site, layer, write, target_noise)
    return out


def _reference_pattern(model, source_ids, target_ids, layers, units, groups, out):
    for i, layer in enumerate(layers):
        PATTERN.update(layer=layer, record=[], replace=None)
        run(model, source_ids)
        src = PATTERN["record"][0]  # (head, q, k)
        PATTERN["record"] = None
        for j, head in enumerate(units):
            for g, group in enumerate(groups):
                PATTERN["replace"] = {(head, q): src[head, q] for q in group}
                out[i, j, g] = run(model, target_ids)
        PATTERN.update(layer=None, replace=None)
    return out


def _reference_pattern_gptj(model, source_ids, target_ids, layers, units, groups, out):
    """GPT-J computes attention in its own ``_attn``, so wrap that instead."""
    for i, layer in enumerate(layers):
        attn = model.transformer.h[layer].attn
        original = attn._attn
        box = {}

        def wrapped(query, key, value, attention_mask=None, original=original, box=box, **kw):
            _, weights = original(query, key, value, attention_mask, **kw)
            if "record" in box:
                box["src"] = weights[0].clone()
            if "replace" in box:
                weights = weights.clone()
                for (head, q), row in box["replace"].items():
                    weights[0, head, q] = row
            return weights @ value, weights

        attn._attn = wrapped
        try:
            box["record"] = True
            run(model, source_ids)
            del box["record"]
            for j, head in enumerate(units):
                for g, group in enumerate(groups):
                    box["replace"] = {(head, q): box["src"][head, q] for q in group}
                    out[i, j, g] = run(model, target_ids)
        finally:
            del attn._attn
    return out


# --- answers of several tokens: the continuation appended, one run per cell and continuation ---------------


def run_all(model, ids, site=None, layer=None, fn=None, noise=None):
    """Every position's logits of one prompt ``(pos, vocab)``, with an optional hook as ``run``'s."""
    handles = [site_hooks(model, site, layer, Sizes(model.config), fn)] if site else []
    if noise is not None:
        embed = model.get_input_embeddings()
        handles.append(embed.register_forward_hook(lambda mod, args, out: out + noise))
    try:
        with torch.no_grad():
            return model(ids[None]).logits[0]
    finally:
        for handle in handles:
            handle.remove()


def continuation_logprob(model, prompt_ids, seq, **hook):
    """log p(seq | prompt) by teacher forcing: ``seq`` (token ids) appended to the prompt, the log-softmax of
    the prediction of each of its tokens summed; ``hook`` as ``run_all``'s (noise on the prompt only)."""
    ids = torch.cat([prompt_ids, torch.tensor(seq[:-1], dtype=torch.long)])
    if hook.get("noise") is not None:
        hook["noise"] = torch.cat([hook["noise"], torch.zeros(len(seq) - 1, hook["noise"].shape[-1])])
    logp = run_all(model, ids, **hook).float().log_softmax(-1)
    start = len(prompt_ids) - 1  # the prompt's last token predicts the first token of seq
    return sum(float(logp[start + k, token]) for k, token in enumerate(seq))


def continuation_diff(model, prompt_ids, answer, wrong, **hook):
    """log p(answer | prompt) - log p(wrong | prompt), each by ``continuation_logprob`` with the same ``hook``."""
    return continuation_logprob(model, prompt_ids, answer, **hook) - continuation_logprob(
        model, prompt_ids, wrong, **hook
    )


def reference_sequence_patch(
    model, source_ids, target_ids, site, layers, units, positions, by_position, answer, wrong, noises=(None, None)
):
    """log p(answer | target) - log p(wrong | target) with each cell patched from the source prompt, at prompt
    positions only, ``(layer, unit, pos_group)``: each continuation appended to the target prompt and run on
    its own with the patch's hook (``continuation_logprob``). ``noises``: the source's and the target's."""
    groups = [[p] for p in positions] if by_position else [list(positions)]
    out = torch.empty(len(layers), len(units), len(groups))
    if site == "attn_pattern":
        model.set_attn_implementation("ref_eager")
        try:
            return _sequence_pattern(model, source_ids, target_ids, layers, units, groups, (answer, wrong), out)
        finally:
            model.set_attn_implementation("eager")
    for i, layer in enumerate(layers):
        src = capture(model, source_ids, site, layer, noises[0])
        for j, unit in enumerate(units):
            for g, group in enumerate(groups):

                def write(act, unit=unit, group=group, src=src):
                    for p in group:
                        act[p, unit] = src[p, unit]

                hook = dict(site=site, layer=layer, fn=write, noise=noises[1])
                out[i, j, g] = continuation_diff(model, target_ids, answer, wrong, **hook)
    return out


def _sequence_pattern(model, source_ids, target_ids, layers, units, groups, seqs, out):
    """``reference_sequence_patch`` of the attention pattern: the source's rows at the prompt's query
    positions, with a zero weight on the continuation's keys (which no prompt query sees)."""
    for i, layer in enumerate(layers):
        PATTERN.update(layer=layer, record=[], replace=None)
        run(model, source_ids)
        src = PATTERN["record"][0]  # (head, q, k)
        PATTERN["record"] = None
        for j, head in enumerate(units):
            for g, group in enumerate(groups):
                total = 0.0
                for seq, sign in zip(seqs, (1, -1)):
                    extra = len(seq) - 1
                    PATTERN["replace"] = {(head, q): torch.nn.functional.pad(src[head, q], (0, extra)) for q in group}
                    total += sign * continuation_logprob(model, target_ids, seq)
                out[i, j, g] = total
        PATTERN.update(layer=None, replace=None)
    return out


# --- attribution patching, one backward pass per cell --------------------------------------------------


def reference_attribution(model, source_ids, target_ids, site, layer, units, positions, answer, wrong):
    """The first-order estimate of patching each (unit, position) cell, ``(unit, pos)``.

    Written as a directional derivative rather than a gradient product: the
    target run gets ``eps * (source - target)`` added at the cell, and
    ``d metric / d eps`` at ``eps = 0`` is the estimate's correction. The metric is the
    logit difference at the last position, or with ``answer`` and ``wrong`` lists of ids
    log p(answer | target) - log p(wrong | target), each continuation appended to the
    target prompt and run on its own with the same nudge at the prompt's cell.
    """
    src = capture(model, source_ids, site, layer)
    tgt = capture(model, target_ids, site, layer)
    out = torch.empty(len(units), len(positions))
    for j, unit in enumerate(units):
        for g, p in enumerate(positions):
            eps = torch.zeros((), requires_grad=True)

            def nudge(act, unit=unit, p=p, eps=eps):
                act[p, unit] = act[p, unit] + eps * (src[p, unit] - tgt[p, unit])

            metric = _nudged_metric(model, target_ids, site, layer, nudge, answer, wrong)
            (slope,) = torch.autograd.grad(metric, eps)
            out[j, g] = metric.detach() + slope
    return out


def _nudged_metric(model, target_ids, site, layer, nudge, answer, wrong):
    """The metric of the target run with ``nudge`` hooked at (site, layer), with its graph: the last position's
    logit difference, or (lists of ids) the continuations' log-probability difference."""
    seqs = ((answer, 1.0), (wrong, -1.0)) if isinstance(answer, list) else ((None, 1.0),)
    total = 0.0
    for seq, sign in seqs:
        ids = target_ids if seq is None else torch.cat([target_ids, torch.tensor(seq[:-1], dtype=torch.long)])
        handle = site_hooks(model, site, layer, Sizes(model.config), nudge)
        try:
            logits = model(ids[None]).logits[0]
        finally:
            handle.remove()
        if seq is None:
            return logits[-1, answer] - logits[-1, wrong]
        logp = logits.float().log_softmax(-1)
        start = len(target_ids) - 1  # the prompt's last token predicts the first token of seq
        total = total + sign * sum(logp[start + k, token] for k, token in enumerate(seq))
    return total


# --- path patching, one plain run per step and sender set --------------------------------------------


def _head_outputs(model, ids):
    """Every layer's per-head output (the output projection's input), ``{layer: (pos, head, d_head)}``."""
    names, sizes = NAMES[model.config.model_type], Sizes(model.config)
    box = {}
    handles = []
    for layer, block in enumerate(get(model, names["layers"])):

        def hook(mod, args, layer=layer):
            box[layer] = args[0][0].view(args[0].shape[1], sizes.h, sizes.dh).clone()

        handles.append(get(block, names["o"]).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for h in handles:
            h.remove()
    return box


def reference_path_patch(model, source_ids, target_ids, senders, receivers, aligned=None, receiver_positions=None):
    """The three steps of path patching, written out plainly (Wang et al. 2022).

    ``senders`` is a list of (layer, head); ``receivers`` ``"logits"`` or a list of
    (site, layer, unit) with site in head_q/head_k/head_v, patched at every position
    (or at ``receiver_positions`` of the target, one list per receiver).
    Returns the target's last-position logits after the last step. Every head that is
    not a sender is frozen at its target value, at every layer (the engine freezes only
    the layers a change can reach; the values must agree). ``aligned``, for prompts of
    different lengths, lists (source position, target position) pairs: a sender takes the
    source value only there and its target value everywhere else; None pairs every
    position with itself.
    """
    if aligned is None:
        assert len(source_ids) == len(target_ids), "prompts of different lengths need `aligned`"
        aligned = [(p, p) for p in range(len(target_ids))]
    names, sizes = NAMES[model.config.model_type], Sizes(model.config)
    source, target = _head_outputs(model, source_ids), _head_outputs(model, target_ids)
    chosen = set(map(tuple, senders))
    handles = []
    for layer, block in enumerate(get(model, names["layers"])):

        def freeze(mod, args, layer=layer):
            x = args[0]
            heads = x[0].view(x.shape[1], sizes.h, sizes.dh)  # (pos, head, d_head), a view of the input
            for head in range(sizes.h):
                heads[:, head] = target[layer][:, head]
                if (layer, head) in chosen:
                    for s, t in aligned:
                        heads[t, head] = source[layer][s, head]

        handles.append(get(block, names["o"]).register_forward_pre_hook(freeze))
    captured = []
    if receivers != "logits":
        for site, layer, unit in receivers:

            def keep(act, unit=unit):
                captured.append(act[:, unit].clone())

            handles.append(site_hooks(model, site, layer, sizes, keep))
    try:
        with torch.no_grad():
            logits = model(target_ids[None]).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    if receivers == "logits":
        return logits
    handles = []
    at = receiver_positions or [list(range(len(target_ids)))] * len(receivers)
    for (site, layer, unit), value, positions in zip(receivers, captured, at):

        def put(act, unit=unit, value=value, positions=positions):
            act[positions, unit] = value[positions]

        handles.append(site_hooks(model, site, layer, sizes, put))
    try:
        with torch.no_grad():
            return model(target_ids[None]).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


# --- span-aligned patching: prompts of different lengths, one plain run per cell -----------------------


def reference_span_patch(
    model, source_ids, target_ids, site, layer, source_positions, target_positions, answer, wrong, unit=None
):
    """Logit difference ``answer - wrong`` at the target's last position, with one cell patched across lengths.

    The source prompt runs alone, at its own length, recording ``site`` at ``layer``; the target
    prompt (any length) then runs with the value at ``source_positions[i]`` written at
    ``target_positions[i]``, pairwise (``answer`` and ``wrong`` lists of ids: the continuations'
    log-probabilities, ``continuation_logprob``). ``unit`` is a head (or neuron) index, or None for the whole
    activation (every head at once for head_out). Which positions pair up (span alignment) is the
    caller's choice, written out in the test; nothing here knows about templates.
    """
    source_positions, target_positions = list(source_positions), list(target_positions)
    if site == "attn_pattern":
        raise ValueError("attn_pattern rows have one entry per key, so they do not carry across prompt lengths")
    if len(source_positions) != len(target_positions):
        raise ValueError(
            f"{len(source_positions)} source positions but {len(target_positions)} target positions: they pair up"
        )
    for name, ids, positions in (("source", source_ids, source_positions), ("target", target_ids, target_positions)):
        if any(not 0 <= p < len(ids) for p in positions):
            raise ValueError(f"{name} positions {positions} out of range for {len(ids)} tokens")
    src = capture(model, source_ids, site, layer)  # (source pos, unit, width)
    which = slice(None) if unit is None else unit

    def write(act):  # act: (target pos, unit, width)
        for s, t in zip(source_positions, target_positions):
            act[t, which] = src[s, which]

    if isinstance(answer, list):  # answers of several tokens: each continuation appended, run with the patch
        return continuation_diff(model, target_ids, answer, wrong, site=site, layer=layer, fn=write)
    logits = run(model, target_ids, site, layer, write)
    return float(logits[answer] - logits[wrong])


# --- faithfulness as MIB defines it -------------------------------------------


def reference_faithfulness(model, pairs, kept, ablation="patch", metric="logit_diff"):
    """MIB's f(C) = (m(C) - m(empty)) / (m(N) - m(empty)), means over pairs, written out plainly.

    ``pairs`` is a list of (clean_ids, corrupt_ids, answer, wrong); ``kept`` maps each component of
    the circuit, ``("embed", 0, 0)``, ``("head_out", layer, head)`` or ``("mlp_out", layer, 0)``, to
    None (kept at every position) or a set of positions. m(C) runs each clean prompt with a hook on
    every other component (and on the kept ones at their other positions) that overwrites it with
    its activation on that pair's corrupted prompt (``ablation="mean"``: the mean over all the
    corrupted prompts), one run per pair; the logit difference at the last position (``answer`` and
    ``wrong`` lists of ids: the continuations' log-probabilities, the prompt's positions replaced). ``kept`` may
    also be a list of such maps, one per pair (a span's positions differ from pair to pair).
    ``metric="logit_diff_norm"``: each pair's logit difference rescaled by that pair's own plain
    clean and corrupted runs (clean 1, corrupted 0) before the means.
    """
    kept_of = kept if isinstance(kept, list) else [kept] * len(pairs)
    cfg, sizes = model.config, Sizes(model.config)
    everything = {("embed", 0, 0)} | {
        (site, layer, unit)
        for layer in range(cfg.num_hidden_layers)
        for site, units in (("head_out", range(sizes.h)), ("mlp_out", [0]))
        for unit in units
    }
    where = {("embed", 0): ("resid_pre", 0)}  # the embeddings' output enters the first block

    def corrupted(ids):
        out = {}
        for site, layer in {(s, la) for s, la, _ in everything}:
            out[(site, layer)] = capture(model, ids, *where.get((site, layer), (site, layer)))
        return out

    values = [corrupted(c) for _, c, _, _ in pairs]
    if ablation == "mean":
        mean = {k: torch.stack([v[k] for v in values]).mean(0) for k in values[0]}
        values = [mean] * len(pairs)

    def patched(ids, a, w, replace, circuit):
        n = len(ids)  # the prompt's positions: only they are replaced (a continuation is computed)
        handles = []
        for site, layer in {(s, la) for s, la, _ in everything}:
            units = [u for s, la, u in everything if (s, la) == (site, layer)]

            def write(act, site=site, layer=layer, units=units, replace=replace):
                for u in units:
                    keep = circuit.get((site, layer, u), set())  # None: kept at every position
                    if keep is None:
                        continue
                    for p in range(n):
                        if p not in keep and p - n not in keep:
                            act[p, u] = replace[(site, layer)][p, u]

            handles.append(site_hooks(model, *where.get((site, layer), (site, layer)), sizes, write))
        try:
            return plain(ids, a, w)
        finally:
            for h in handles:
                h.remove()

    def plain(ids, a, w):
        """The logit difference at the last position; for answers of several tokens (lists of ids),
        log p(a | prompt) - log p(w | prompt) by teacher forcing, each continuation run on its own."""
        if isinstance(a, list):
            return continuation_diff(model, ids, a, w)
        with torch.no_grad():
            logits = model(ids[None]).logits[0, -1]
        return float(logits[a] - logits[w])

    m_c, m_empty, m_full = [], [], []
    for (clean, corrupt, a, w), replace, kept in zip(pairs, values, kept_of):
        scale = lambda x: x
        if metric == "logit_diff_norm":
            high, low = plain(clean, a, w), plain(corrupt, a, w)
            scale = lambda x, high=high, low=low: (x - low) / (high - low)
        m_c.append(scale(patched(clean, a, w, replace, kept)))
        m_empty.append(scale(patched(clean, a, w, replace, {})))
        m_full.append(scale(patched(clean, a, w, replace, {c: None for c in everything})))
    mean = lambda xs: sum(xs) / len(xs)
    return (mean(m_c) - mean(m_empty)) / (mean(m_full) - mean(m_empty))


def reference_areas(percents, f):
    """MIB's CPR and CMD of a faithfulness curve: trapezoids over the fractions, one pair of points at a time."""
    cpr = cmd = 0.0
    for i in range(len(f) - 1):
        width = (percents[i + 1] - percents[i]) / 100
        cpr += width * (f[i] + f[i + 1]) / 2
        cmd += width * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2
    return cpr, cmd


# --- the logit lens --------------------------------------------------------------------------

FINAL_NORM = {"gpt2": "transformer.ln_f", "gptj": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}


def reference_logit_lens(model, ids, answer, wrong):
    """The logit lens of one prompt, written out plainly: a forward hook keeps each block's output, then the
    final norm module and the answer and wrong rows of ``lm_head`` are applied by hand, and the logit transform
    the config names (soft-capping, a scale) is applied to each of the two logits. Returns (layer, pos)."""
    cfg = model.config
    blocks = get(model, NAMES[cfg.model_type]["layers"])
    kept = []
    handles = [
        b.register_forward_hook(lambda m, i, o: kept.append(o[0] if isinstance(o, tuple) else o)) for b in blocks
    ]
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for h in handles:
            h.remove()
    norm = get(model, FINAL_NORM.get(cfg.model_type, "model.norm"))
    rows = []
    with torch.no_grad():
        for h in kept:
            x = norm(h[0])  # (pos, d_model)
            a = x @ model.lm_head.weight[answer]
            w = x @ model.lm_head.weight[wrong]
            cap = getattr(cfg, "final_logit_softcapping", None)
            if cap:
                a, w = cap * torch.tanh(a / cap), cap * torch.tanh(w / cap)
            if getattr(cfg, "logits_scaling", None):
                a, w = a / cfg.logits_scaling, w / cfg.logits_scaling
            if getattr(cfg, "logit_scale", None):
                a, w = a * cfg.logit_scale, w * cfg.logit_scale
            rows.append((a - w).float())
    return torch.stack(rows)


# --- direct logit attribution ------------------------------------------------------------------

OUT_PROJ = {"gpt2": "attn.c_proj", "gptj": "attn.out_proj", "gpt_neox": "attention.dense"}


@torch.no_grad()
def reference_dla(model, ids, answer, wrong):
    """Direct logit attribution of one prompt at its last token, written out plainly with hooks: returns
    (heads (layer, head), everything else summed: embeddings, output-projection biases, MLPs and the biases of
    the final norm and lm_head). The final norm is undone by hand: centred (LayerNorm) or not (RMSNorm), divided
    by the scale of the whole residual stream, times the gain (1 + weight for Gemma)."""
    cfg = model.config
    sizes = Sizes(cfg)
    blocks = get(model, NAMES[cfg.model_type]["layers"])
    norm = get(model, FINAL_NORM.get(cfg.model_type, "model.norm"))
    seen = {"z": [], "mlp": []}

    def embed(m, args, kwargs):  # the first block's input: the token and position embeddings
        seen["embed"] = (args or [kwargs["hidden_states"]])[0][0, -1]

    hooks = [blocks[0].register_forward_pre_hook(embed, with_kwargs=True)]
    for block in blocks:
        proj = get(block, OUT_PROJ.get(cfg.model_type, "self_attn.o_proj"))
        hooks.append(proj.register_forward_pre_hook(lambda m, a: seen["z"].append((m, a[0][0, -1]))))
        hooks.append(get(block, "mlp").register_forward_hook(lambda m, a, o: seen["mlp"].append(o[0, -1])))
    hooks.append(norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0][0, -1])))
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for h in hooks:
            h.remove()
    x = seen["x"].float()
    layer_norm = "RMS" not in type(norm).__name__
    center = (lambda v: v - v.mean()) if layer_norm else (lambda v: v)
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None)
    scale = torch.sqrt((center(x) ** 2).mean() + eps)
    gain = norm.weight.float() + (1.0 if type(norm).__name__.startswith("Gemma") else 0.0)
    u = (model.lm_head.weight[answer] - model.lm_head.weight[wrong]).float()
    read = lambda v: float((gain * center(v.float()) / scale) @ u)
    heads, rest = torch.zeros(cfg.num_hidden_layers, sizes.h), read(seen["embed"])
    for layer, (proj, z) in enumerate(seen["z"]):
        w = proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T  # (heads * d_head, d_model)
        for h in range(sizes.h):
            part = z[h * sizes.dh : (h + 1) * sizes.dh].float() @ w[h * sizes.dh : (h + 1) * sizes.dh].float()
            heads[layer, h] = read(part)
        if getattr(proj, "bias", None) is not None:
            rest += read(proj.bias)
        rest += read(seen["mlp"][layer])
    if getattr(norm, "bias", None) is not None:
        rest += float(norm.bias.float() @ u)
    return heads, rest


# --- generation under a patch: the full sequence rerun for every new token --------------------------


def reference_generate(model, source_ids, target_ids, writes, max_new_tokens, eos=None):
    """Greedy continuation of ``target_ids`` with some activations of its prompt positions taken from the source.

    ``writes`` is a list of ``(site, layer, unit, pairs)``: ``unit`` a head (or neuron) index, or
    None for the whole activation; ``pairs`` a list of (source position, target position). The
    source prompt runs alone, recording each site; then every step runs the WHOLE sequence so far
    (prompt and the tokens generated) with no cache, hooks overwriting the prompt positions at the
    sites with the source values (the generated positions are never written), and appends the argmax
    of the last position's logits. Stops before ``eos`` (not included). ``writes=[]``: plain greedy.
    Returns the new token ids.
    """
    sizes = Sizes(model.config)
    # Every source value is captured before any hook is registered: the source run must be left unpatched.
    sources = [capture(model, source_ids, site, layer) for site, layer, _, _ in writes]  # (source pos, unit, width)
    handles = []
    for (site, layer, unit, pairs), src in zip(writes, sources):

        def put(act, src=src, unit=unit, pairs=pairs):
            which = slice(None) if unit is None else unit
            for s, t in pairs:
                act[t, which] = src[s, which]

        handles.append(site_hooks(model, site, layer, sizes, put))
    sequence, new = target_ids.tolist(), []
    try:
        for _ in range(max_new_tokens):
            with torch.no_grad():
                logits = model(torch.tensor(sequence)[None]).logits[0, -1]
            token = int(logits.argmax())
            if token == eos:
                break
            new.append(token)
            sequence.append(token)
    finally:
        for h in handles:
            h.remove()
    return new


# --- faithfulness of a circuit of edges (MIB's edge track), one plain run per pair and edge set -----------
#
# Senders: ("embed", 0, 0), ("head_out", layer, head), ("mlp_out", layer, 0). Receivers: ("head_q", layer, head),
# ("head_k", layer, kv_head), ("head_v", layer, kv_head), ("mlp_in", layer, 0), ("logits", 0, 0). An edge is a pair
# (sender, receiver) of these tuples. Each receiver reads its own input: the residual stream the model gives it, plus
# the corrupted-minus-current output of every sender whose edge into it is not kept. The residual stream itself is
# never edited.

EMBED = ("embed", 0, 0)
LOGITS = ("logits", 0, 0)
EDGE_MODEL_TYPES = ("gpt2", "gpt_neox", "llama", "qwen2", "mistral", "gemma")
REFUSED_EDGE_MODEL_TYPES = {
    "gemma2": "a norm after the attention output (and after the MLP's): a head's output does not add to the "
    "residual stream as itself",
    "cohere": "attention and MLP read one shared normed input: an MLP's own input cannot be set without the heads'",
    "gptj": "attention and MLP read one shared ln_1 output: an MLP's own input cannot be set without the heads'",
    "granite": "the residual stream adds each branch times residual_multiplier: the outputs are not plain sums",
}
ATTN_NORM = {"gpt2": "ln_1"}  # the attention's input norm, a module of the block; the rest: input_layernorm


def _edge_model(model):
    """The model's module names and sizes, and whether its MLP reads the block's input (parallel residual);
    refuses what this plain twin does not do."""
    kind = model.config.model_type
    assert kind not in REFUSED_EDGE_MODEL_TYPES, f"edge faithfulness of {kind}: {REFUSED_EDGE_MODEL_TYPES[kind]}"
    assert kind in EDGE_MODEL_TYPES, f"edge faithfulness of {kind} is not written here ({', '.join(EDGE_MODEL_TYPES)})"
    parallel = kind == "gpt_neox" and bool(model.config.use_parallel_residual)
    return NAMES[kind], Sizes(model.config), parallel


def reference_edge_graph(model):
    """Every edge of the model, a list of (sender, receiver), receivers in forward order.

    Written out from the config: a layer's query receivers are one per head, its key and value receivers one per
    key-value head (grouped-query attention); every sender below a receiver feeds it. A layer's heads feed that
    layer's MLP, except under a parallel residual (GPT-NeoX's use_parallel_residual), where the MLP reads the
    block's input: there a layer's heads first feed the next layer's.
    """
    _, sizes, parallel = _edge_model(model)
    senders, edges = [EMBED], []
    for layer in range(model.config.num_hidden_layers):
        receivers = [("head_q", layer, h) for h in range(sizes.h)]
        receivers += [(site, layer, k) for site in ("head_k", "head_v") for k in range(sizes.kv)]
        edges += [(s, r) for r in receivers for s in senders]
        heads = [("head_out", layer, h) for h in range(sizes.h)]
        below_mlp = senders if parallel else senders + heads
        edges += [(s, ("mlp_in", layer, 0)) for s in below_mlp]
        senders = senders + heads + [("mlp_out", layer, 0)]
    return edges + [(s, LOGITS) for s in senders]


def _check_edges(model, edges, graph):
    _, _, parallel = _edge_model(model)
    known = set(graph)
    for sender, receiver in edges:
        if parallel and sender[0] == "head_out" and receiver == ("mlp_in", sender[1], 0):
            raise AssertionError(
                f"{sender} -> {receiver}: under a parallel residual a layer's MLP reads the block's input, "
                "so that layer's heads do not feed it"
            )
        assert (sender, receiver) in known, f"{sender} -> {receiver} is not an edge of this model"


def _head_rows(proj, head, d_head):
    """Head ``head``'s rows of the output projection as ``z_h @ rows`` ``(d_head, d_model)``, no bias."""
    w = proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T  # (heads * d_head, d_model)
    return w[head * d_head : (head + 1) * d_head]


def reference_sender_outputs(model, ids, noise=None):
    """What each sender adds to the residual stream in a plain run of ``ids``: ``{sender: (pos, d_model)}``.
    The embeddings are the first block's input; a head's output its slice of the output projection's input
    times its rows of the projection's weight (no bias); an MLP's output the MLP module's output. ``noise``
    ``(pos, d_model)``: added to the token embeddings (the embedding module's output)."""
    names, sizes, _ = _edge_model(model)
    blocks = get(model, names["layers"])
    out = {}

    def embed(mod, args, kwargs):
        out[EMBED] = (args[0] if args else kwargs["hidden_states"])[0].clone()

    handles = [blocks[0].register_forward_pre_hook(embed, with_kwargs=True)]
    if noise is not None:
        handles.append(model.get_input_embeddings().register_forward_hook(lambda mod, args, o: o + noise))
    for layer, block in enumerate(blocks):
        proj = get(block, names["o"])

        def heads(mod, args, layer=layer):
            z = args[0][0]  # (pos, heads * d_head)
            for h in range(sizes.h):
                out[("head_out", layer, h)] = z[:, h * sizes.dh : (h + 1) * sizes.dh] @ _head_rows(mod, h, sizes.dh)

        def mlp(mod, args, output, layer=layer):
            out[("mlp_out", layer, 0)] = (output[0] if isinstance(output, tuple) else output)[0].clone()

        handles.append(proj.register_forward_pre_hook(heads))
        handles.append(get(block, names["mlp"]).register_forward_hook(mlp))
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for h in handles:
            h.remove()
    return out


def _missing(senders, edges, receiver):
    """The senders of ``receiver`` whose edge into it is not kept: their corrupted output replaces their
    current one in this receiver's input (and only there)."""
    return [u for u in senders if (u, receiver) not in edges]


def _qkv_columns(model, site, unit, sizes):
    """The projection (a module path in the block) whose output holds ``site``'s ``unit`` (a head, or a key-value
    head for k and v), and that unit's columns of its output."""
    names, kind = NAMES[model.config.model_type], model.config.model_type
    which = "qkv".index(site[-1])
    if "q" in names:  # separate q_proj, k_proj, v_proj; k and v have n_kv_heads * d_head columns
        return names["qkv"[which]], slice(unit * sizes.dh, (unit + 1) * sizes.dh)
    if kind == "gpt2":  # c_attn: [q | k | v], each d_model wide, heads in order within each
        start = which * sizes.d + unit * sizes.dh
        return names["qkv"], slice(start, start + sizes.dh)
    # gpt_neox: query_key_value, per head [q | k | v], each d_head wide
    start = unit * 3 * sizes.dh + which * sizes.dh
    return names["qkv"], slice(start, start + sizes.dh)


def _edge_hooks(model, edges, corrupt, n, graph, extra=None):
    """Register the hooks of one patched run: every receiver reads its own input (see the section's comment),
    at the prompt's positions ``< n`` only. ``corrupt`` maps each sender to its corrupted output ``(n, d_model)``;
    ``extra`` maps receivers to a further ``(n, d_model)`` added to their own input. Returns the handles."""
    names, sizes, _ = _edge_model(model)
    senders_of = {}
    for u, r in graph:
        senders_of.setdefault(r, []).append(u)
    blocks = get(model, names["layers"])
    now = {}  # this run's sender outputs, as they happen
    resid = {}  # each block's input: what its attention reads

    def own_input(actual, receiver):
        """The receiver's input: the actual one (pos, d_model) plus each dropped edge's corrupted-minus-current."""
        x = actual.clone()
        for u in _missing(senders_of[receiver], edges, receiver):
            x[:n] += corrupt[u][:n] - now[u][:n]
        if extra and receiver in extra:
            x[:n] = x[:n] + extra[receiver]
        return x

    handles = []
    for layer, block in enumerate(blocks):

        def block_input(mod, args, kwargs, layer=layer):
            x = (args[0] if args else kwargs["hidden_states"])[0]
            if layer == 0:
                now.clear()
                now[EMBED] = x.clone()
            resid[layer] = x.clone()

        handles.append(block.register_forward_pre_hook(block_input, with_kwargs=True))

        # the head receivers: each computes its own q, k or v from its own input, written into the projection's output
        norm = get(block, ATTN_NORM.get(model.config.model_type, "input_layernorm"))
        by_module = {}
        for site, units in (("head_q", range(sizes.h)), ("head_k", range(sizes.kv)), ("head_v", range(sizes.kv))):
            for unit in units:
                path, cols = _qkv_columns(model, site, unit, sizes)
                by_module.setdefault(path, []).append(((site, layer, unit), cols))
        for path, receivers in by_module.items():

            def project(mod, args, output, layer=layer, receivers=receivers, norm=norm):
                output = output.clone()
                for receiver, cols in receivers:
                    x = own_input(resid[layer], receiver)
                    y = mod.forward(norm(x[None]))  # forward, not __call__: this hook does not run again
                    output[0, :n, cols] = y[0, :n, cols]
                return output

            handles.append(get(block, path).register_forward_hook(project))

        proj = get(block, names["o"])

        def heads(mod, args, layer=layer):
            z = args[0][0]
            for h in range(sizes.h):
                now[("head_out", layer, h)] = z[:, h * sizes.dh : (h + 1) * sizes.dh] @ _head_rows(mod, h, sizes.dh)

        handles.append(proj.register_forward_pre_hook(heads))

        def mlp_input(mod, args, layer=layer):  # the MLP's input norm reads the MLP receiver's own input
            return (own_input(args[0][0], ("mlp_in", layer, 0))[None], *args[1:])

        handles.append(get(block, names["ln2"]).register_forward_pre_hook(mlp_input))

        def mlp(mod, args, output, layer=layer):
            now[("mlp_out", layer, 0)] = (output[0] if isinstance(output, tuple) else output)[0].clone()

        handles.append(get(block, names["mlp"]).register_forward_hook(mlp))

    def logits_input(mod, args):
        return (own_input(args[0][0], LOGITS)[None], *args[1:])

    final_norm = get(model, FINAL_NORM.get(model.config.model_type, "model.norm"))
    handles.append(final_norm.register_forward_pre_hook(logits_input))
    return handles


def _plain_diff(model, ids, answer, wrong):
    """The logit difference at the last position, or (lists of ids) ``continuation_diff``; hooks already registered
    act on every run."""
    if isinstance(answer, list):
        return continuation_diff(model, ids, answer, wrong)
    with torch.no_grad():
        logits = model(ids[None]).logits[0, -1]
    return float(logits[answer] - logits[wrong])


def reference_edge_metric(model, clean_ids, corrupt, edges, answer, wrong):
    """m(C) of one pair: the clean prompt run with every receiver reading its own input, the edges outside
    ``edges`` carrying ``corrupt``'s value (``reference_sender_outputs`` of the corrupted prompt, or a mean of
    them); the logit difference at the last position (lists of ids: ``continuation_diff``, the continuation's
    positions unedited)."""
    graph = reference_edge_graph(model)
    edges = set(edges)
    _check_edges(model, edges, graph)
    handles = _edge_hooks(model, edges, corrupt, len(clean_ids), graph)
    try:
        return _plain_diff(model, clean_ids, answer, wrong)
    finally:
        for h in handles:
            h.remove()


def reference_edge_faithfulness(model, pairs, edges, ablation="patch", metric="logit_diff"):
    """MIB's faithfulness of a circuit of edges, f = (m(C) - m(empty)) / (m(full) - m(empty)), means over pairs.

    ``pairs``: (clean_ids, corrupt_ids, answer, wrong); ``edges``: the kept (sender, receiver) pairs, each an edge
    of ``reference_edge_graph``. ``ablation="mean"``: each sender's corrupted value is its mean output over all
    the corrupted prompts (of one length). ``metric="logit_diff_norm"``: each pair's value rescaled by its own
    plain clean and corrupted runs (clean 1, corrupted 0) before the means, as ``reference_faithfulness``.
    """
    graph = reference_edge_graph(model)
    edges = set(edges)
    _check_edges(model, edges, graph)
    values = [reference_sender_outputs(model, corrupt) for _, corrupt, _, _ in pairs]
    if ablation == "mean":
        assert len({len(c) for _, c, _, _ in pairs}) == 1, "mean ablation needs corrupted prompts of one length"
        mean = {u: torch.stack([v[u] for v in values]).mean(0) for u in values[0]}
        values = [mean] * len(pairs)
    else:
        assert ablation == "patch", ablation
    m_c, m_empty, m_full = [], [], []
    for (clean, corrupt, a, w), value in zip(pairs, values):
        scale = lambda x: x
        if metric == "logit_diff_norm":
            high, low = _plain_diff(model, clean, a, w), _plain_diff(model, corrupt, a, w)
            scale = lambda x, high=high, low=low: (x - low) / (high - low)
        else:
            assert metric == "logit_diff", metric
        m_c.append(scale(reference_edge_metric(model, clean, value, edges, a, w)))
        m_empty.append(scale(reference_edge_metric(model, clean, value, set(), a, w)))
        m_full.append(scale(reference_edge_metric(model, clean, value, graph, a, w)))
    mean = lambda xs: sum(xs) / len(xs)
    return (mean(m_c) - mean(m_empty)) / (mean(m_full) - mean(m_empty))


def reference_edge_score(model, pairs, edge, ablation="patch"):
    """The exact score of one edge, written out: the mean over pairs of m(every edge but ``edge``) minus the
    plain clean run's logit difference, each m one hooked run (``reference_edge_metric``)."""
    graph = reference_edge_graph(model)
    values = [reference_sender_outputs(model, corrupt) for _, corrupt, _, _ in pairs]
    if ablation == "mean":
        mean = {u: torch.stack([v[u] for v in values]).mean(0) for u in values[0]}
        values = [mean] * len(pairs)
    kept = set(graph) - {edge}
    changes = [
        reference_edge_metric(model, clean, value, kept, a, w) - _plain_diff(model, clean, a, w)
        for (clean, _, a, w), value in zip(pairs, values)
    ]
    return sum(changes) / len(changes)


# --- first-order edge scores (EAP, EAP-IG), one backward pass per edge, pair and step -------------------------


def reference_edge_attribution(model, pairs, edges, method="eap", steps=5, metric="logit_diff", split=True):
    """First-order estimates of m(G minus e) - m(G) for each edge e = (u, r) of ``edges``, the mean over pairs.

    Written as a directional derivative, not a gradient product: the clean prompt runs with every receiver reading
    its own input (``_edge_hooks``, every edge kept), r's own input plus t * delta_u at the prompt's positions, where
    delta_u is u's output on the corrupted prompt minus its output on the clean one (``reference_sender_outputs``)
    and t a scalar at 0; d(logit difference)/dt is the score, one backward pass per edge and pair. With answers as
    lists of ids (several tokens), the metric is log p(answer | prompt) - log p(wrong | prompt) by teacher forcing:
    each continuation appended to the prompt, its own hooked run (the appended positions unedited, their
    embeddings their own), the score the answer run's derivative minus the wrong run's.
    ``method="eap-ig"``: the same derivative in ``steps`` runs whose token embeddings (the embedding module's
    output) are corrupted + alpha * (clean - corrupted), alpha = k / steps for k = 0 .. steps - 1, averaged
    (delta_u stays the plain runs' difference). ``pairs``: (clean_ids, corrupt_ids, answer, wrong), or with a fifth
    entry, noise ``(pos, d_model)`` added to the corrupted prompt's token embeddings. ``metric="logit_diff_norm"``:
    each pair divided by its plain clean minus corrupted logit difference. ``split=False``: t * delta_u goes into
    the residual stream r reads (the block's input for a head's q/k/v; for an MLP, the residual after attention),
    which every later component reads too: the gradient at the shared residual, another quantity.
    """
    graph = reference_edge_graph(model)
    _check_edges(model, edges, graph)
    alphas = [1.0] if method == "eap" else [k / steps for k in range(steps)]
    assert method in ("eap", "eap-ig"), method
    out = torch.zeros(len(edges))
    embed = model.get_input_embeddings()
    for clean, corrupt, a, w, *noise in pairs:
        noise = noise[0] if noise else None
        assert len(clean) == len(corrupt), "edges patch position by position"
        before, after = reference_sender_outputs(model, clean), reference_sender_outputs(model, corrupt, noise)
        scale = 1.0
        if metric == "logit_diff_norm":
            low = _plain_diff_noised(model, corrupt, a, w, noise)
            scale = 1.0 / (_plain_diff(model, clean, a, w) - low)
        with torch.no_grad():
            ends = (embed(clean[None])[0], embed(corrupt[None])[0] + (0 if noise is None else noise))
        for i, (u, r) in enumerate(edges):
            delta = (after[u] - before[u]).detach()
            for alpha in alphas:
                moved = ends[1] + alpha * (ends[0] - ends[1])
                slope = _edge_slope(model, clean, r, delta, None if alpha == 1.0 else moved, (a, w), graph, split)
                out[i] += scale * slope / (len(alphas) * len(pairs))
    return out


def _plain_diff_noised(model, ids, answer, wrong, noise):
    if noise is None:
        return _plain_diff(model, ids, answer, wrong)
    if isinstance(answer, list):
        return continuation_diff(model, ids, answer, wrong, noise=noise)
    handle = model.get_input_embeddings().register_forward_hook(lambda mod, args, o: o + noise)
    try:
        return _plain_diff(model, ids, answer, wrong)
    finally:
        handle.remove()


def _edge_slope(model, ids, receiver, delta, embeddings, answers, graph, split):
    """d(metric)/dt at t = 0 of the clean run ``ids`` with ``t * delta`` added to ``receiver``'s own input
    (``split``) or to the residual stream it reads, the prompt's token embeddings replaced by ``embeddings``; the
    metric ``_graded_diff``'s."""
    t = torch.zeros((), requires_grad=True)
    n = len(ids)
    if split:
        handles = _edge_hooks(model, set(graph), {}, n, graph, extra={receiver: t * delta})
    else:
        handles = [_shared_nudge(model, receiver, t * delta, n)]
    if embeddings is not None:  # the prompt's positions only: an appended continuation keeps its own
        replace = lambda mod, args, o: torch.cat([embeddings[None].to(o.dtype), o[:, n:]], 1)
        handles.append(model.get_input_embeddings().register_forward_hook(replace))
    try:
        value = _graded_diff(model, ids, *answers)
    finally:
        for h in handles:
            h.remove()
    (slope,) = torch.autograd.grad(value, t)
    return float(slope)


def _graded_diff(model, ids, answer, wrong):
    """The hooked run's logit difference at the last position, or (lists of ids) log p(answer | ids) -
    log p(wrong | ids) by teacher forcing, each continuation appended and run on its own; a tensor in the graph."""
    if not isinstance(answer, list):
        logits = model(ids[None]).logits[0, -1]
        return logits[answer] - logits[wrong]
    value = 0.0
    for seq, sign in ((answer, 1.0), (wrong, -1.0)):
        logp = model(torch.cat([ids, torch.tensor(seq[:-1], dtype=torch.long)])[None]).logits[0].float()
        logp = logp.log_softmax(-1)
        value = value + sign * sum(logp[len(ids) - 1 + k, token] for k, token in enumerate(seq))
    return value


def _shared_nudge(model, receiver, nudge, n):
    """A hook adding ``nudge`` ``(n, d_model)`` to the residual stream ``receiver`` reads, where every later
    component reads it too: the block's input (a head's q/k/v; an MLP under a parallel residual), the attention's
    output (an MLP after it), the final norm's input (the logits). Returns the handle."""
    names, _, parallel = _edge_model(model)
    site, layer, _ = receiver

    def add(x):
        x = x.clone()
        x[0, :n] = x[0, :n] + nudge
        return x

    if site == "logits":
        norm = get(model, FINAL_NORM.get(model.config.model_type, "model.norm"))
        return norm.register_forward_pre_hook(lambda mod, args: (add(args[0]), *args[1:]))
    block = get(model, names["layers"])[layer]
    if site == "mlp_in" and not parallel:

        def attention_output(mod, args, output):
            return (add(output[0]), *output[1:]) if isinstance(output, tuple) else add(output)

        return get(block, names["attn"]).register_forward_hook(attention_output)

    def block_input(mod, args, kwargs):
        if args:
            return (add(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": add(kwargs["hidden_states"])}

    return block.register_forward_pre_hook(block_input, with_kwargs=True)
