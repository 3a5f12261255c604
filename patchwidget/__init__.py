"""patchwidget: activation patching you can click through, on nnsight.

Example:
    >>> import patchwidget as pw
    >>> model = pw.load_model()
    >>> result = pw.patch(model, "The capital of France is", "The capital of Japan is",
    ...                   answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    >>> fig = result.plot()
"""

from . import demo_data
from .circuits import Cell, JointResult, patch_sites
from .engine import patch
from .metrics import METRICS
from .models import DEMO_MODEL_DIR, load_model
from .prompts import Noise, PromptError, noise
from .result import PatchResult, ResultFileError
from .sites import SITES, Arch, PatchwidgetError, UnknownSiteError, UnsupportedModelError, register_architecture
from .widget import PatchWidget, explore

__all__ = [
    "DEMO_MODEL_DIR",
    "METRICS",
    "SITES",
    "PatchResult",
    "PatchwidgetError",
    "PromptError",
    "ResultFileError",
    "UnknownSiteError",
    "UnsupportedModelError",
    "load_model",
    "register_architecture",
    "Arch",
    "noise",
    "Noise",
    "patch",
    "patch_sites",
    "Cell",
    "JointResult",
    "demo_data",
    "explore",
    "PatchWidget",
]
__version__ = "0.1.0"
