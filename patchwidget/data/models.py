"""Loading models: the bundled demo model, hub names, and models already in memory.

Example:
    >>> from patchwidget import load_model
    >>> model = load_model()                       # the bundled demo model, offline
    >>> model.config.n_layer
    4
    >>> gpt2 = load_model("openai-community/gpt2")  # doctest: +SKIP  (needs network)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


def load_model(
    model: Any = None,
    *,
    tokenizer: Any = None,
    attn_implementation: str = "eager",
    **kwargs: Any,
) -> Any:
    """A model wrapped for nnsight, ready for ``patch`` and ``explore``.

    ``model`` is one of:

    - ``None``: the small GPT-2 model bundled with patchwidget;
    - a hub name or local folder (``"openai-community/gpt2"``), loaded with
      ``from_pretrained`` through ``nnsight.TransformersModel``; extra keyword
      arguments (``device_map="auto"``, ``dtype=...``) go to it, and
      ``dispatch=False`` leaves the weights unloaded for models that only run
      remotely (``remote=True``);
    - an already-wrapped nnsight model, returned as it is;
    - a Hugging Face model object, with its ``tokenizer``.

    Eager attention is the default because the ``attn_pattern`` site reads
    attention weights, which the fused kernels do not return.
    """
    from nnsight import Envoy, TransformersModel

    if model is None:
        model = DEMO_MODEL_DIR
    if isinstance(model, Envoy):
        return model
    if isinstance(model, str | Path):
        kwargs.setdefault("dispatch", True)  # dispatch=False keeps weights unloaded, e.g. for remote=True
        if tokenizer is None and not kwargs["dispatch"] and Path(model).is_dir():
            from transformers import AutoTokenizer

            # Without weights, nnsight builds the model from its config and cannot infer a
            # tokenizer from that alone: read it from the folder.
            tokenizer = AutoTokenizer.from_pretrained(model)
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        with _quiet_loading(model):
            return TransformersModel(
                str(model), task="text-generation", attn_implementation=attn_implementation, **kwargs
            )
    if hasattr(model, "config") and hasattr(model, "forward"):
        if tokenizer is None:
            raise ModelLoadError(
                f"a {type(model).__name__} object needs its tokenizer: load_model(model, tokenizer=tokenizer)"
            )
        if hasattr(model, "set_attn_implementation") and model.config._attn_implementation != attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return TransformersModel(model.eval(), tokenizer=tokenizer, task="text-generation", **kwargs)
    raise ModelLoadError(
        f"cannot load a model from {type(model).__name__!r}: give None (the demo model), a hub name or folder, "
        "an nnsight model, or a Hugging Face model with tokenizer=..."
    )


def is_demo_model(name: str | Path) -> bool:
    """Whether ``name`` (a model's ``_name_or_path``) is the bundled demo model's folder.

    Example:
        >>> is_demo_model(DEMO_MODEL_DIR), is_demo_model("openai-community/gpt2")
        (True, False)
    """
    return bool(name) and Path(name).resolve() == DEMO_MODEL_DIR.resolve()


@contextlib.contextmanager
def _quiet_loading(model: str | Path) -> Iterator[None]:
    """No "Loading weights" bar for the bundled model, loaded in a blink in every workshop cell; a hub
    model's download keeps its bar, which says something useful."""
    from transformers.utils import logging

    quiet = is_demo_model(model) and logging.is_progress_bar_enabled()
    if quiet:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            logging.enable_progress_bar()
