"""PatchResult: the numbers a patching sweep produced, with their names.

Saved as JSON or ``.npz`` (loaded with ``allow_pickle=False``), never pickle,
so loading a file cannot run code.

Example:
    >>> import numpy as np
    >>> r = PatchResult(per_pair=np.zeros((1, 2, 3)), dims=("layer", "pos"),
    ...                 coords={"layer": [0, 1], "pos": [0, 1, 2]}, tokens=["a", "b", "c"],
    ...                 clean_baseline=np.ones(1), corrupt_baseline=np.zeros(1), settings={})
    >>> r.values.shape
    (2, 3)
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.metrics import normalize
from ..errors import ResultFileError
from ..files import write_atomic

FORMAT_VERSION = 1
ARRAYS = ("per_pair", "clean_baseline", "corrupt_baseline")
MAX_ELEMENTS = 2**28  # 1 GiB of float32: far above any grid, far below what a crafted file could inflate to
MAX_META_BYTES = 2**26


@dataclass
class PatchResult:
    """Values of a metric over a grid of patched sites.

    ``per_pair`` is ``(pair, *shape)``; ``values`` is its mean over pairs.
    ``dims`` names the axes (for example ``("layer", "pos")``), ``coords``
    gives each axis's indices, ``tokens`` the first clean prompt's tokens.
    """

    per_pair: np.ndarray
    dims: tuple[str, ...]
    coords: dict[str, list[int]]
    tokens: list[str]
    clean_baseline: np.ndarray  # (pair,)
    corrupt_baseline: np.ndarray  # (pair,)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_pair = np.asarray(self.per_pair, dtype=np.float32)
        self.dims = tuple(self.dims)
        self.clean_baseline = np.asarray(self.clean_baseline, dtype=np.float32)
        self.corrupt_baseline = np.asarray(self.corrupt_baseline, dtype=np.float32)
        missing = [d for d in self.dims if d not in self.coords]
        if missing:
            raise ResultFileError(f"coords lack the dims {missing}")
        expected = (len(self.clean_baseline), *(len(self.coords[d]) for d in self.dims))
        if self.per_pair.shape != expected:
            raise ResultFileError(f"per_pair has shape {self.per_pair.shape}, expected {expected} from dims and coords")
        if self.corrupt_baseline.shape != self.clean_baseline.shape:
            raise ResultFileError(
                f"corrupt_baseline has shape {self.corrupt_baseline.shape}, clean_baseline {self.clean_baseline.shape}"
            )
        bad = [p for p in self.coords.get("pos", []) if not 0 <= p < len(self.tokens)]
        if bad:  # plot() and to_dataframe() label positions with tokens
            raise ResultFileError(f"positions {bad[:5]} have no token: the result has {len(self.tokens)} tokens")

    @property
    def values(self) -> np.ndarray:
        """The mean over prompt pairs, shaped like the grid."""
        return self.per_pair.mean(axis=0)

    @property
    def n_pairs(self) -> int:
        return self.per_pair.shape[0]

    def spread(self) -> np.ndarray:
        """Standard deviation over prompt pairs, shaped like the grid."""
        return self.per_pair.std(axis=0)

    def sign_flips(self, tolerance: float = 0.05) -> np.ndarray:
        """Per cell, how many pairs disagree in sign with the mean.

        A pair counts when its value has the opposite sign to the mean and is
        larger than ``tolerance`` times the grid's largest absolute mean, so
        that noise around zero is not called a flip. A cell that flips in some
        pairs is a warning that a circuit found on one example may mislead.
        """
        mean = self.values
        floor = tolerance * (float(np.abs(mean).max()) if mean.size else 0.0)
        opposite = np.sign(self.per_pair) * np.sign(mean)[None] < 0
        return (opposite & (np.abs(self.per_pair) > floor)).sum(axis=0)

    def non_finite_cells(self) -> list[str]:
        """Labels of the cells where some pair's value is NaN or infinite (``"L0 H2 John (3)"``)."""
        bad = np.argwhere(~np.isfinite(self.per_pair).all(axis=0)) if self.per_pair.size else []
        names = [self.labels(d) for d in self.dims]
        return [" ".join(names[axis][i] for axis, i in enumerate(index)) for index in bad]

    def labels(self, dim: str) -> list[str]:
        """Axis labels for display: token text for positions, span labels, ``L3``/``H2``/``KV1``/``N17`` otherwise."""
        if dim == "pos":
            return [f"{self.tokens[p]} ({p})" for p in self.coords["pos"]]
        if dim == "span":
            return [str(label) for label in self.coords["span"]]
        prefix = {"layer": "L", "head": "H", "kv_head": "KV", "neuron": "N"}[dim]
        return [f"{prefix}{i}" for i in self.coords[dim]]

    def normalized(self) -> PatchResult:
        """Rescaled per pair so that the clean baseline is 1 and the corrupted 0."""
        per_pair = normalize(self.per_pair, self.clean_baseline, self.corrupt_baseline)
        settings = {**self.settings, "metric": f"{self.settings.get('metric', 'metric')} (normalized)"}
        ones = np.ones_like(self.clean_baseline)
        return PatchResult(per_pair, self.dims, self.coords, self.tokens, ones, ones * 0, settings)

    def to_dataframe(self, per_pair: bool = False) -> Any:
        """Long-form pandas DataFrame: one row per cell (and pair), a ``value`` column."""
        import pandas as pd

        data = self.per_pair if per_pair else self.values[None]
        index = np.indices(data.shape).reshape(data.ndim, -1)
        columns: dict[str, Any] = {}
        if per_pair:
            columns["pair"] = index[0]
        for axis, dim in enumerate(self.dims, start=1):
            columns[dim] = np.asarray(self.coords[dim])[index[axis]]
            if dim == "pos":
                columns["token"] = [self.tokens[p] for p in columns["pos"]]
        columns["value"] = data.reshape(-1)
        return pd.DataFrame(columns)

    def top_sites(self, k: int) -> Any:
        """A ``pw.Circuit`` of the ``k`` cells with the largest |effect|, largest first, with their values
        and where the grid came from (model, prompts, site, metric, direction, method).

        Example:
            >>> circuit = result.top_sites(3)   # doctest: +SKIP
        """
        from ..circuits.circuit import from_result  # circuits use the engine, a floor above results

        return from_result(self, k)

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """A matplotlib Figure of the grid (see ``patchwidget.plot.plot_result``)."""
        from ..plot import plot_result

        return plot_result(self, ax=ax, **kwargs)

    # --- files -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "patchwidget.PatchResult",
            "version": FORMAT_VERSION,
            "dims": list(self.dims),
            "coords": {k: _coords(k, v) for k, v in self.coords.items()},
            "tokens": list(self.tokens),
            "per_pair": self.per_pair.tolist(),
            "clean_baseline": self.clean_baseline.tolist(),
            "corrupt_baseline": self.corrupt_baseline.tolist(),
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PatchResult:
        """A result from ``to_dict``'s data, every field checked."""
        if not isinstance(data, dict) or data.get("format") != "patchwidget.PatchResult":
            raise ResultFileError("not a patchwidget result (missing format marker)")
        if data.get("version") != FORMAT_VERSION:
            raise ResultFileError(f"unsupported result format version {data.get('version')!r}")
        try:
            return cls(
                per_pair=np.asarray(data["per_pair"], dtype=np.float32),
                dims=tuple(str(d) for d in data["dims"]),
                coords={str(k): _coords(str(k), v) for k, v in data["coords"].items()},
                tokens=[str(t) for t in data["tokens"]],
                clean_baseline=np.asarray(data["clean_baseline"], dtype=np.float32),
                corrupt_baseline=np.asarray(data["corrupt_baseline"], dtype=np.float32),
                settings=dict(data["settings"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ResultFileError(f"result data is malformed: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write to ``.json`` or ``.npz`` (chosen by the suffix).

        Example:
            >>> r.save("grid.json")  # doctest: +SKIP
        """
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".json":
            return write_atomic(path, json.dumps(data))
        if path.suffix == ".npz":
            arrays = {k: np.asarray(data.pop(k), dtype=np.float32) for k in ARRAYS}
            return write_atomic(path, lambda f: np.savez_compressed(f, meta=np.array(json.dumps(data)), **arrays))
        raise ResultFileError(f"cannot save to {str(path)!r}: use a .json or .npz file name")

    @classmethod
    def load(cls, path: str | Path) -> PatchResult:
        """Read a result written by ``save``; a damaged file raises ``ResultFileError``."""
        path = Path(path)
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text())
            elif path.suffix == ".npz":
                data = _read_npz(path)
            else:
                raise ResultFileError(f"cannot load {str(path)!r}: expected a .json or .npz file")
        except ResultFileError:
            raise
        except Exception as err:  # zip, JSON and numpy errors all mean a damaged file
            raise ResultFileError(f"could not read {str(path)!r}: {type(err).__name__}: {err}") from err
        return cls.from_dict(data)


def _read_npz(path: Path) -> dict[str, Any]:
    """The metadata and arrays of a saved ``.npz``, each array's declared shape and type checked before it is read.

    A compressed file can declare arrays far larger than itself; nothing is
    inflated before its header says it is what the metadata describes.
    """
    with zipfile.ZipFile(path) as archive, np.load(path, allow_pickle=False) as npz:
        headers = {}
        for key in ("meta", *ARRAYS):
            with archive.open(f"{key}.npy") as member:
                major, _ = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
            headers[key] = (shape, dtype)
        meta_shape, meta_dtype = headers["meta"]
        if meta_shape != () or meta_dtype.kind != "U" or meta_dtype.itemsize > MAX_META_BYTES:
            raise ResultFileError(f"its metadata is not one string of at most {MAX_META_BYTES} bytes")
        data = json.loads(str(npz["meta"]))
        if not isinstance(data, dict) or not isinstance(data.get("coords"), dict):
            raise ResultFileError("its metadata lacks coords")
        sizes = [len(data["coords"].get(d, [])) for d in data.get("dims", [])]
        n_pairs = headers["clean_baseline"][0][:1]
        expected = {"per_pair": (*n_pairs, *sizes), "clean_baseline": n_pairs, "corrupt_baseline": n_pairs}
        for key in ARRAYS:
            shape, dtype = headers[key]
            if dtype != np.float32 or tuple(shape) != expected[key] or int(np.prod(shape)) > MAX_ELEMENTS:
                raise ResultFileError(
                    f"array {key!r} declares {dtype} of shape {tuple(shape)}, but the metadata describes float32 "
                    f"of shape {expected[key]} (at most {MAX_ELEMENTS} values)"
                )
            data[key] = npz[key]
    return data


def _coords(dim: str, values: Any) -> list:
    """A dim's coordinates as stored: span labels are text, every other coordinate an index."""
    return [str(v) for v in values] if dim == "span" else [int(v) for v in values]
