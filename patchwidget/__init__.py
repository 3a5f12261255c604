"""patchwidget: activation patching you can click through, on nnsight.

Example:
    >>> import patchwidget as pw
    >>> model = pw.load_model()
    >>> result = pw.patch(model, "The capital of France is", "The capital of Japan is",
    ...                   answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    >>> fig = result.plot()
"""

from .circuits.circuit import Circuit
from .circuits.edge_scores import EdgeScores, edge_scores
from .circuits.edges import Edge, edge_graph
from .circuits.faithfulness import ABLATIONS, faithfulness, faithfulness_nodes
from .circuits.generate import Generation, generate
from .circuits.joint import JointResult, patch_sites
from .core.batches import Speedups
from .core.cells import Cell
from .core.engine import DIRECTIONS, METHODS, attention_pattern
from .core.metrics import METRICS
from .core.sites import SITES, Arch, register_architecture
from .data import demo_data
from .data.models import DEMO_MODEL_DIR, load_model
from .data.prompts import Noise, noise
from .data.templates import Prompt, Template
from .errors import (
    MemoryBudgetError,
    MessageError,
    MetricError,
    ModelLoadError,
    NonFiniteWarning,
    PatchwidgetError,
    PromptError,
    RemoteSettingError,
    RemoteVersionError,
    ResultFileError,
    SettingsError,
    UnknownMetricError,
    UnknownSiteError,
    UnsupportedModelError,
)
from .grids.dla import direct_logit_attribution
from .grids.lens import logit_lens
from .grids.patch import patch
from .grids.path import path_patch
from .grids.result import PatchResult
from .health import doctor
from .search.bottleneck import find_bottleneck
from .search.nodes import find_circuit
from .ui.widget import PatchWidget, explore

# The public names, sorted: classes and constants, then functions and modules.
__all__ = [
    "ABLATIONS",
    "DEMO_MODEL_DIR",
    "DIRECTIONS",
    "METHODS",
    "METRICS",
    "SITES",
    "Speedups",
    "Arch",
    "Cell",
    "Circuit",
    "Edge",
    "EdgeScores",
    "edge_graph",
    "edge_scores",
    "Generation",
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
    "RemoteVersionError",
    "ResultFileError",
    "SettingsError",
    "Template",
    "UnknownMetricError",
    "UnknownSiteError",
    "UnsupportedModelError",
    "attention_pattern",
    "demo_data",
    "direct_logit_attribution",
    "doctor",
    "explore",
    "faithfulness",
    "faithfulness_nodes",
    "find_bottleneck",
    "find_circuit",
    "generate",
    "load_model",
    "logit_lens",
    "noise",
    "patch",
    "patch_sites",
    "path_patch",
    "register_architecture",
]
from importlib.metadata import version as _version

__version__ = _version("patchwidget")  # one version, pyproject.toml's
