"""patchwidget: activation patching you can click through, on nnsight.

Example:
    >>> import patchwidget as pw
    >>> model = pw.load_model()
    >>> result = pw.patch(model, "The capital of France is", "The capital of Japan is",
    ...                   answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    >>> fig = result.plot()
"""

from . import demo_data
from .circuit import Circuit
from .circuit_search import find_circuit
from .circuits import JointResult, patch_sites
from .engine import DIRECTIONS, METHODS, patch
from .errors import (
    MemoryBudgetError,
    MessageError,
    MetricError,
    ModelLoadError,
    NonFiniteWarning,
    PatchwidgetError,
    PromptError,
    RemoteSettingError,
    ResultFileError,
    SettingsError,
    UnknownMetricError,
    UnknownSiteError,
    UnsupportedModelError,
)
from .faithful import ABLATIONS, faithfulness, faithfulness_nodes
from .grid import Cell
from .metrics import METRICS
from .models import DEMO_MODEL_DIR, load_model
from .path import path_patch
from .prompts import Noise, noise
from .result import PatchResult
from .search import find_bottleneck
from .sites import SITES, Arch, register_architecture
from .templates import Prompt, Template
from .widget import PatchWidget, explore

# The public names, sorted: classes and constants, then functions and modules.
__all__ = [
    "ABLATIONS",
    "DEMO_MODEL_DIR",
    "DIRECTIONS",
    "METHODS",
    "METRICS",
    "SITES",
    "Arch",
    "Cell",
    "Circuit",
    "JointResult",
    "MemoryBudgetError",
    "MessageError",
    "MetricError",
    "ModelLoadError",
    "Noise",
    "NonFiniteWarning",
    "PatchResult",
    "PatchWidget",
    "PatchwidgetError",
    "Prompt",
    "PromptError",
    "RemoteSettingError",
    "ResultFileError",
    "SettingsError",
    "Template",
    "UnknownMetricError",
    "UnknownSiteError",
    "UnsupportedModelError",
    "demo_data",
    "explore",
    "faithfulness",
    "faithfulness_nodes",
    "find_bottleneck",
    "find_circuit",
    "load_model",
    "noise",
    "patch",
    "patch_sites",
    "path_patch",
    "register_architecture",
]
__version__ = "0.1.0"
