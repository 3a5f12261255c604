"""What can be patched, and where it lives in each architecture.

A *site* is a kind of activation (``resid_pre``, ``head_out``, ...). This
module is the one place that knows the module names of each architecture; the
engine asks it for a *view* of a site at one layer, shaped
``(batch, pos, unit, width)``:

- residual-stream sites have one unit: ``(batch, pos, 1, d_model)``
- per-head sites have one unit per head: ``(batch, pos, head, d_head)``
- ``mlp_neuron`` has one unit per neuron: ``(batch, pos, neuron, 1)``
- ``attn_pattern`` is read as ``(batch, query_pos, head, key_pos)``

The view shares storage with the model's own tensor, so writing into it inside
an nnsight trace patches the model.

Example:
    >>> SITES["head_out"].unit
    'head'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..errors import ModelLoadError, UnknownSiteError, UnsupportedModelError


@dataclass(frozen=True)
class Site:
    """One kind of activation that can be patched."""

    name: str
    unit: str | None  # name of the axis inside a layer: None, "head" or "neuron"
    by_position: bool  # default: one cell per position (True) or all positions at once
    doc: str


SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site("resid_pre", None, True, "residual stream entering the layer"),
        Site("resid_mid", None, True, "residual stream between attention and MLP"),
        Site("resid_post", None, True, "residual stream leaving the layer"),
        Site("attn_out", None, True, "output of the attention block"),
        Site("mlp_out", None, True, "output of the MLP block"),
        Site("head_out", "head", True, "per-head attention output, before the output projection"),
        Site("head_q", "head", True, "per-head queries (before rotary embeddings)"),
        Site("head_k", "head", True, "per-head keys (key-value heads under grouped-query attention)"),
        Site("head_v", "head", True, "per-head values (key-value heads under grouped-query attention)"),
        Site("attn_pattern", "head", False, "per-head attention pattern"),
        Site("mlp_neuron", "neuron", False, "MLP hidden activation, after the nonlinearity"),
    )
}


@dataclass(frozen=True)
class Arch:
    """Module paths of one architecture, relative to the wrapped model.

    ``layers`` is the list of blocks; the other paths are relative to a block.
    ``qkv`` says how queries, keys and values are produced: ``"gpt2"`` (one
    projection, concatenated), ``"neox"`` (one projection, interleaved per
    head) or ``"split"`` (separate ``q``/``k``/``v`` projections).
    """

    layers: str
    final_norm: str
    unembed: str
    embed: str
    attn: str
    mlp: str
    ln_mid: str | None  # norm whose input is resid_mid; None if there is none
    attn_proj_out: str
    mlp_proj_out: str
    qkv: str
    q: str
    k: str = ""
    v: str = ""
    ln_attn: str = ""  # norm whose output the attention's q/k/v projections read; "" if not named (edges need it)


_LLAMA = Arch(
    layers="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    embed="model.embed_tokens",
    attn="self_attn",
    mlp="mlp",
    ln_mid="post_attention_layernorm",
    attn_proj_out="self_attn.o_proj",
    mlp_proj_out="mlp.down_proj",
    qkv="split",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    ln_attn="input_layernorm",
)

ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
        attn="attn",
        mlp="mlp",
        ln_mid="ln_2",
        attn_proj_out="attn.c_proj",
        mlp_proj_out="mlp.c_proj",
        qkv="gpt2",
        q="attn.c_attn",
        ln_attn="ln_1",
    ),
    "gpt_neox": Arch(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        embed="gpt_neox.embed_in",
        attn="attention",
        mlp="mlp",
        ln_mid="post_attention_layernorm",
        attn_proj_out="attention.dense",
        mlp_proj_out="mlp.dense_4h_to_h",
        qkv="neox",
        q="attention.query_key_value",
        ln_attn="input_layernorm",
    ),
    "gptj": Arch(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
        attn="attn",
        mlp="mlp",
        ln_mid=None,
        attn_proj_out="attn.out_proj",
        mlp_proj_out="mlp.fc_out",
        qkv="split",
        q="attn.q_proj",
        k="attn.k_proj",
        v="attn.v_proj",
        ln_attn="ln_1",
    ),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gemma": _LLAMA,
}


def register_architecture(model_type: str, arch: Arch) -> None:
    """Teach patchwidget the module names of another architecture.

    ``model_type`` is the Hugging Face ``config.model_type``; ``arch`` names
    the modules (see ``Arch``). The names are checked against the model when
    it is first used, and any that are missing are listed.

    Example:
        >>> register_architecture("my_llama", ARCHITECTURES["llama"])
    """
    ARCHITECTURES[model_type] = arch


@dataclass(frozen=True)
class ModelInfo:
    """Shapes and module paths of one model, read once from its config."""

    arch: Arch
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    parallel_residual: bool

    def shape(self) -> dict[str, int]:
        """The sizes a found circuit depends on (recorded with results, checked when a circuit is used)."""
        return {k: int(getattr(self, k)) for k in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_mlp")}

    def n_units(self, site: str) -> int:
        unit = SITES[site].unit
        if unit == "neuron":
            return self.d_mlp
        if unit == "head":
            return self.n_kv_heads if site in ("head_k", "head_v") else self.n_heads
        return 1


def check_wrapped(model: Any) -> None:
    """Refuse anything but a model wrapped for nnsight (``pw.load_model``), saying how to wrap it."""
    if hasattr(model, "_module") and hasattr(model, "trace"):
        return
    if model is None or isinstance(model, str | os.PathLike):
        how = "pw.load_model()" if model is None else f"pw.load_model({str(model)!r})"
        raise ModelLoadError(f"model is {model!r}, not a loaded model: load it first with model = {how}")
    if hasattr(model, "config") and hasattr(model, "forward"):
        raise ModelLoadError(
            f"model is a plain {type(model).__name__}, which patchwidget runs through nnsight: "
            "wrap it with model = pw.load_model(hf_model, tokenizer=tokenizer)"
        )
    raise ModelLoadError(
        f"model is an object of type {type(model).__name__!r}, not a model from pw.load_model(...) "
        "(the bundled model, a hub name or folder, or a Hugging Face model with tokenizer=...)"
    )


def model_info(model: Any) -> ModelInfo:
    """Read the architecture and sizes of a wrapped model.

    Raises ``UnsupportedModelError`` naming the model type and the supported
    ones when the architecture is not in the table, and anything but a wrapped model
    (``check_wrapped``).
    """
    check_wrapped(model)
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Name its modules with patchwidget.register_architecture(model_type, patchwidget.Arch(...))"
        )
    _check_paths(model, model_type, ARCHITECTURES[model_type])
    n_heads = _first_attr(config, "num_attention_heads", "n_head")
    d_model = _first_attr(config, "hidden_size", "n_embd")
    d_mlp = _first_attr(config, "intermediate_size", "n_inner", default=None) or 4 * d_model
    return ModelInfo(
        arch=ARCHITECTURES[model_type],
        model_type=model_type,
        n_layers=_first_attr(config, "num_hidden_layers", "n_layer"),
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        d_model=d_model,
        d_head=getattr(config, "head_dim", None) or d_model // n_heads,
        d_mlp=d_mlp,
        parallel_residual=bool(getattr(config, "use_parallel_residual", False)),
    )


def _check_paths(model: Any, model_type: str, arch: Arch) -> None:
    """Every module the site table names must exist; list the ones that do not."""
    missing = [path for path in (arch.layers, arch.final_norm, arch.unembed, arch.embed) if not _has(model, path)]
    if not missing:
        first = module(model, arch.layers)[0]
        block_paths = [
            arch.attn,
            arch.mlp,
            arch.ln_mid,
            arch.attn_proj_out,
            arch.mlp_proj_out,
            arch.q,
            arch.k,
            arch.v,
            arch.ln_attn,
        ]
        missing = [f"{arch.layers}[0].{p}" for p in block_paths if p and not _has(first, p)]
    if missing:
        raise UnsupportedModelError(
            f"this {model_type!r} model lacks modules that patchwidget's site table names: {', '.join(missing)}; "
            "name its modules with patchwidget.register_architecture(model_type, patchwidget.Arch(...))"
        )


def _has(model: Any, path: str) -> bool:
    try:
        module(model, path)
        return True
    except (AttributeError, IndexError, TypeError):
        return False


def _first_attr(config: Any, *names: str, **default: Any) -> Any:
    for name in names:
        if getattr(config, name, None) is not None:
            return getattr(config, name)
    if "default" in default:
        return default["default"]
    raise UnsupportedModelError(f"model config has none of the attributes {names}")


def module(model: Any, path: str) -> Any:
    """The (nnsight-wrapped) submodule at a dotted path."""
    for part in path.split("."):
        model = getattr(model, part)
    return model


def layer_module(model: Any, info: ModelInfo, layer: int, path: str = "") -> Any:
    """The block at ``layer``, or its submodule at ``path``."""
    block = module(model, info.arch.layers)[layer]
    return module(block, path) if path else block


def check_site_supported(site: str, info: ModelInfo) -> None:
    """Refuse a site name that is unknown, or that this model does not have."""
    if site not in SITES:
        raise UnknownSiteError(f"unknown site {site!r}; choose one of: {', '.join(SITES)}")
    if site == "resid_mid" and (info.parallel_residual or info.arch.ln_mid is None):
        raise UnknownSiteError(
            f"site 'resid_mid' does not exist in this {info.model_type} model: "
            "attention and MLP read the same residual stream in parallel"
        )


def view(model: Any, info: ModelInfo, site: str, layer: int) -> torch.Tensor:
    """The site's activation at ``layer`` as ``(batch, pos, unit, width)``.

    Call inside an nnsight trace, in forward order. Writing into the returned
    tensor patches the model. ``attn_pattern`` is read-only here (see
    ``engine``): it is taken from the attention module's second output, which
    needs eager attention.
    """
    return reshape(info, site, raw(model, info, site, layer))


def location(info: ModelInfo, site: str) -> tuple[str, str]:
    """Where a site lives: (module path relative to a block, ``"input"``, ``"output"`` or ``"weights"``).

    The one place that says it: ``raw`` reads it inside nnsight traces, and plain
    PyTorch hooks (``Circuit.write``) read it outside them.
    """
    arch = info.arch
    if site in ("head_q", "head_k", "head_v"):
        return ((arch.q, arch.k, arch.v)["qkv".index(site[-1])] if arch.qkv == "split" else arch.q), "output"
    table = {
        "resid_pre": ("", "input"),
        "resid_mid": (arch.ln_mid or "", "input"),
        "resid_post": ("", "output"),
        "attn_out": (arch.attn, "output"),
        "mlp_out": (arch.mlp, "output"),
        "head_out": (arch.attn_proj_out, "input"),
        "mlp_neuron": (arch.mlp_proj_out, "input"),
        "attn_pattern": (arch.attn, "weights"),
    }
    if site not in table:
        raise UnknownSiteError(f"unknown site {site!r}")
    return table[site]


def pick(value: Any, kind: str) -> torch.Tensor:
    """The site's tensor in a module's input or output, as ``location`` names it."""
    if kind == "weights":
        return attention_weights(value)
    return hidden_states(value) if kind == "output" else value


def raw(model: Any, info: ModelInfo, site: str, layer: int) -> torch.Tensor:
    """The model's own tensor that holds the site: a module's input or output.

    Gradients are taken with respect to this tensor (``view`` is a reshaped
    alias of it, which the forward pass never reads).
    """
    path, kind = location(info, site)
    mod = layer_module(model, info, layer, path)
    return pick(mod.input if kind == "input" else mod.output, kind)


def reshape(info: ModelInfo, site: str, x: torch.Tensor) -> torch.Tensor:
    """A ``(batch, pos, unit, width)`` view of the tensor ``raw`` returns."""
    if site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        return x.unsqueeze(2)
    if site == "head_out":
        return _split_heads(x, info.d_head)
    if site == "mlp_neuron":
        return x.unsqueeze(3)
    if site == "attn_pattern":
        return x.transpose(1, 2)  # (batch, q_pos, head, k_pos)
    which = "qkv".index(site[-1])
    if info.arch.qkv == "split":
        return _split_heads(x, info.d_head)
    if info.arch.qkv == "gpt2":  # [q | k | v], each (batch, pos, d_model)
        d = info.n_heads * info.d_head
        return _split_heads(x[..., which * d : (which + 1) * d], info.d_head)
    # neox: (batch, pos, head, [q | k | v]) interleaved per head
    per_head = _split_heads(x, 3 * info.d_head)
    return per_head[..., which * info.d_head : (which + 1) * info.d_head]


def _split_heads(x: torch.Tensor, d_head: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], x.shape[-1] // d_head, d_head)  # (batch, pos, head, d_head)


# Whether a module returns a tensor or a tuple is an internal of transformers that changes between
# releases (GPT-J's blocks returned tuples until 5.24, tensors since), so nothing below declares it:
# every read looks at what the module returned in this very run.


def hidden_states(out: Any) -> torch.Tensor:
    """The hidden states in a module's output: the output itself, or its first element if it is a tuple."""
    return out[0] if isinstance(out, tuple | list) else out


def output_form(out: Any) -> int:
    """How a module returned its output: 0 for a bare tensor, else the length of its tuple."""
    return len(out) if isinstance(out, tuple | list) else 0


def attention_weights(out: Any) -> torch.Tensor:
    """The attention weights an attention module returns beside its output, ``(batch, head, q, k)``."""
    if not isinstance(out, tuple | list) or len(out) < 2 or not isinstance(out[1], torch.Tensor):
        raise UnsupportedModelError(
            "this model's attention module does not return its attention weights, so 'attn_pattern' cannot be "
            "read; load it with attn_implementation='eager'"
        )
    return out[1]


def skip_block(block: Any, form: int, hidden: torch.Tensor) -> None:
    """Inside a trace: do not run ``block``; use ``hidden`` as its output.

    ``form`` is what ``output_form`` saw the same model's blocks return (a tuple's
    trailing entries, caches or attention weights, are not used by the next block).
    """
    block.skip((hidden,) + (None,) * (form - 1) if form else hidden)


def logits_module(model: Any, info: ModelInfo) -> Any:
    """The unembedding, whose output is the logits."""
    return module(model, info.arch.unembed)


def on_input_device(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Token ids on the device of the model's embeddings (CPU when the weights are
    not loaded here, as for remote execution)."""
    device = model._module.get_input_embeddings().weight.device
    return ids if device.type == "meta" else ids.to(device)


def add_noise(model: Any, info: ModelInfo, noise: torch.Tensor | None, rows: slice | torch.Tensor) -> None:
    """Inside a trace: add ``noise`` to the token embeddings of ``rows``."""
    if noise is not None:
        embeddings = module(model, info.arch.embed).output
        embeddings[rows] += noise.to(embeddings.device, embeddings.dtype)


# transformers 5 renamed the forward argument and output field ``past_key_values`` to ``cache``
# (the old name warns until 5.40); whichever this version's outputs have is used for both.
CACHE = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def cache_tensors(cache: Any, n_pos: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's keys and values from a run's key-value cache, ``(row, kv_head, pos, d_head)``.

    None where the run left no complete cache of its ``n_pos`` positions: a wrapper that
    replaced the attention modules, say, or a sliding-window layer (Mistral's
    ``sliding_window``, Qwen2's ``use_sliding_window``, local layers in ``layer_types``),
    whose cache keeps only its last ``window - 1`` positions, not the first ones a patched
    copy would read. The patched copies then run from position 0. What the cache holds is
    observed here, not inferred from the config.
    """
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        return None
    if any(layer.keys.shape[-2] != n_pos or layer.values.shape[-2] != n_pos for layer in layers):
        return None
    return [(layer.keys.detach(), layer.values.detach()) for layer in layers]


def prefix_cache(model: Any, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, end: int) -> Any:
    """A key-value cache holding positions ``< end`` of ``rows`` of a run, for a forward pass over the rest."""
    cache = DynamicCache(config=model.config)
    device = model._module.get_input_embeddings().weight.device
    for layer, (keys, values) in enumerate(kv):
        cache.update(keys[rows, :, :end].to(device), values[rows, :, :end].to(device), layer)
    return cache


def last_positions(
    rows: torch.Tensor, last: torch.Tensor, width: int
) -> tuple[int | torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """What to pass as ``logits_to_keep`` so that the positions ``last`` of rows ``rows`` are unembedded,
    and where they land.

    ``last[k]`` is where the ``k``-th read (a copy, or a prompt) has its last real
    token in row ``rows[k]`` of a pass ``width`` positions wide: rows may end at
    different positions (prompts padded on the right), and a packed row holds
    several copies. Returns ``(1, None)`` when there is one read per row, each at
    the last position, else the positions to keep and each read's (row, index into them).
    """
    if len(rows) == len(torch.unique(rows)) and bool((last == width - 1).all()):
        return 1, None
    keep = torch.unique(last)
    return keep, (rows, torch.searchsorted(keep, last))


def last_tokens(
    lengths: torch.Tensor, width: int
) -> tuple[int | torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``last_positions`` for a pass of one prompt per row, ``lengths`` its rows' real lengths."""
    return last_positions(torch.arange(len(lengths)), lengths - 1, width)


def at_last(kept: Any, index: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    """Each read of ``kept`` (``(row, kept position, ...)``, as ``logits_to_keep`` left it) at its
    last real token: each row's last kept position, or the (row, kept position) ``index`` names
    (see ``last_positions``)."""
    if index is None:
        return kept[:, -1]
    rows, at = index
    return kept[rows.to(kept.device), at.to(kept.device)]


def last_logits(model: Any, info: ModelInfo, index: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    """Inside a trace: each read's logits at its last real token, ``(read, vocab)`` (see ``last_positions``).

    These are the model's own output logits, not the unembedding's output: some models
    transform logits after it (Granite divides by ``logits_scaling``, Gemma 2 soft-caps,
    Cohere multiplies by ``logit_scale``), and the model's output has every such step.
    """
    return at_last(model.output.logits, index)


def unembedded_logits(model: Any, info: ModelInfo, index: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    """Inside a trace: what the unembedding itself returned at each read's last token, ``(read, vocab)``:
    compared with ``last_logits`` to see whether the model transforms its logits after it."""
    return at_last(logits_module(model, info).output, index)


def attend_all(model: Any, rows: int, width: int) -> torch.Tensor:
    """An attention mask of ones, ``(rows, width)``: every row attends to all earlier positions.

    Prompts padded on the right need no more (a real token never attends to a later pad),
    and passing it says so: transformers warns about padded ids without a mask, and nnsight
    would make a mask of only the positions a pass computes, not the cached ones before them.
    """
    return on_input_device(model, torch.ones(rows, width, dtype=torch.long))


def answer_unembedding(model: Any, info: ModelInfo) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The unembedding's weight and bias, where its output is exactly ``hidden @ weight.T + bias``:
    a plain linear layer with its weights here (not on a server). None otherwise.

    That the model's logits are the unembedding's output, with nothing after it, is not
    declared here but observed on the runs (``runs.Runs.plain_logits``)."""
    head = logits_module(model, info)._module
    if type(head) is not torch.nn.Linear or head.weight.device.type == "meta":
        return None
    return head.weight.detach(), None if head.bias is None else head.bias.detach()


# Sites of the last block whose values at other positions than the last change when its MLP runs at the last
# position only (``mlp_at_read_positions``): a pass that writes or reads one of them there runs the MLP in full.
AFTER_LAST_MLP = ("mlp_out", "mlp_neuron", "resid_post")


def mlp_at_read_positions(model: Any, info: ModelInfo, keep: int | torch.Tensor) -> None:
    """Inside a trace: run the last block's MLP at the positions whose logits are read only.

    ``keep`` is the pass's ``logits_to_keep``: 1 (each row read at its last position) or
    the positions read (several copies packed in a row, answers of several tokens). After
    the last block's attention nothing mixes positions, so the MLP's output at the other
    positions feeds nothing that is read: a pass saves most of its last block's work there.
    At the last position only, the MLP's output ``(row, 1, d_model)`` broadcasts over the
    positions in the block's residual sum; at several, it is put back at its positions
    (zeros elsewhere, which nothing reads). Valid only when no write or read at the last
    layer touches ``AFTER_LAST_MLP``.
    """
    mlp = layer_module(model, info, info.n_layers - 1, info.arch.mlp)
    if isinstance(keep, int):
        mlp.input = mlp.input[:, -keep:]
        return
    x = mlp.input  # (row, pos, d_model)
    at = keep.to(x.device)
    mlp.input = x[:, at]
    out = mlp.output  # (row, read position, d_model)
    full = torch.zeros(x.shape[0], x.shape[1], out.shape[-1], dtype=out.dtype, device=out.device)
    full[:, at] = out
    mlp.output = full


def answer_logits(
    model: Any,
    info: ModelInfo,
    index: tuple[torch.Tensor, torch.Tensor] | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> Any:
    """Inside a trace: each read's logits at its last real token for the rows of ``weight`` only,
    ``(row, len(weight))``; the full unembedding is skipped (a metric that reads two answers'
    logits does not need the other 50,000, and the pass then never reads their weights)."""
    head = logits_module(model, info)
    hidden = head.input  # (row, kept position, d_model)
    rows = at_last(hidden, index)
    logits = rows @ weight.to(rows.device, rows.dtype).T
    if bias is not None:
        logits = logits + bias.to(rows.device, rows.dtype)
    head.skip(hidden[..., :1])
    return logits


def final_hidden(model: Any, info: ModelInfo, index: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    """Inside a trace: the unembedding's input at each read, ``(read, d_model)``, the unembedding itself
    skipped (a continuation's reads are unembedded outside the trace, each with the columns it needs:
    ``continuation.scored_hidden``)."""
    head = logits_module(model, info)
    hidden = head.input  # (row, kept position, d_model)
    rows = at_last(hidden, index)
    head.skip(hidden[..., :1])
    return rows


def takes_segment_mask(model: Any, n_pos: int) -> bool:
    """Whether a pass of this model can take a custom 4D attention mask (``segment_mask``) in place of the causal one.

    Eager and SDPA attention add the mask as given (transformers returns a 4D mask
    as it is); other kernels (flash attention) build their own. A sliding window
    narrower than the prompt would have to be in the mask too, so those models
    keep one copy per row.
    """
    config = model.config
    window = getattr(config, "sliding_window", None)
    return config._attn_implementation in ("eager", "sdpa") and (window is None or window >= n_pos)


def segment_mask(model: Any, allowed: torch.Tensor) -> torch.Tensor:
    """The additive 4D attention mask that lets each query see the keys ``allowed`` says, in the model's dtype
    and on its input device: 0 where allowed, the dtype's lowest value elsewhere."""
    weight = model._module.get_input_embeddings().weight
    dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return on_input_device(model, mask)
