"""PatchResult: saving, loading, data frames and figures."""

from __future__ import annotations

import json
import pathlib

import matplotlib
import numpy as np
import pytest

import patchwidget as pw
from patchwidget import demo_data

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def result(demo):
    pairs = demo_data.ioi_pairs(2, seed=1)
    return pw.patch(
        demo,
        **demo_data.as_prompts(pairs),
        site="head_out",
        layers=[2, 3],
        metric="logit_diff_norm",
    )


def test_result_describes_itself(result):
    assert result.dims == ("layer", "head", "pos")
    assert result.coords["layer"] == [2, 3] and result.coords["head"] == [0, 1, 2, 3]
    assert result.values.shape == (2, 4, len(result.tokens))
    assert result.settings["site"] == "head_out" and result.settings["direction"] == "denoise"
    assert result.labels("pos")[1].startswith(result.tokens[1])


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_and_load_round_trip(result, tmp_path, suffix):
    path = result.save(tmp_path / f"grid{suffix}")
    back = pw.PatchResult.load(path)
    np.testing.assert_array_equal(back.per_pair, result.per_pair)
    assert back.dims == result.dims and back.coords == result.coords and back.tokens == result.tokens
    assert back.settings == result.settings
    np.testing.assert_array_equal(back.clean_baseline, result.clean_baseline)


def test_damaged_files_fail_clearly(result, tmp_path):
    path = result.save(tmp_path / "grid.json")
    path.write_text(path.read_text()[:100])
    with pytest.raises(pw.ResultFileError, match="could not read"):
        pw.PatchResult.load(path)
    data = result.to_dict()
    data["per_pair"] = data["per_pair"][:1][:1]
    data["coords"]["layer"] = [2]
    (tmp_path / "altered.json").write_text(json.dumps(data | {"per_pair": [[1.0]]}))
    with pytest.raises(pw.ResultFileError, match="shape"):
        pw.PatchResult.load(tmp_path / "altered.json")
    npz = result.save(tmp_path / "grid.npz")
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(pw.ResultFileError):
        pw.PatchResult.load(npz)
    with pytest.raises(pw.ResultFileError, match=r"\.json or \.npz"):
        result.save(tmp_path / "grid.pkl")


class _Payload:
    """Pickled, it writes a file when unpickled: what a malicious result file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "pickle ran"))


def test_npz_is_loaded_without_pickle(result, tmp_path):
    """Fails if loading ever unpickles: the payload would write its marker file."""
    marker = tmp_path / "pwned"
    data = result.to_dict()
    arrays = {k: np.asarray(data.pop(k), dtype=np.float32) for k in ("per_pair", "clean_baseline", "corrupt_baseline")}
    for field in ("meta", "per_pair"):
        path = tmp_path / f"evil-{field}.npz"
        evil = np.array([_Payload(marker)], dtype=object)
        np.savez(path, **{"meta": np.array(json.dumps(data)), **arrays, field: evil})
        with pytest.raises(pw.ResultFileError):
            pw.PatchResult.load(path)
        assert not marker.exists(), f"loading {path.name} ran pickled code"
    # the payload does work when unpickled, so the check above has power
    with np.load(tmp_path / "evil-meta.npz", allow_pickle=True) as npz:
        npz["meta"]
    assert marker.read_text() == "pickle ran"


def test_dataframe(result):
    df = result.to_dataframe()
    assert list(df.columns) == ["layer", "head", "pos", "token", "value"]
    assert len(df) == result.values.size
    row = df[(df["layer"] == 3) & (df["head"] == 1) & (df["pos"] == 4)].iloc[0]
    assert row.value == pytest.approx(result.values[1, 1, 4])
    assert len(result.to_dataframe(per_pair=True)) == result.per_pair.size


def test_plot_uses_a_centred_diverging_map_and_token_labels(result):
    fig = result.plot()
    ax = fig.axes[0]
    image = ax.images[0]
    low, high = image.get_clim()
    assert low == pytest.approx(-high) and high == pytest.approx(np.abs(result.values).max())
    assert image.get_cmap().name.startswith("RdBu")
    assert [t.get_text() for t in ax.get_xticklabels()] == result.labels("pos")
    assert len(ax.get_yticklabels()) == 8  # 2 layers x 4 heads
    fixed = result.plot(vmax=2.0)
    assert fixed.axes[0].images[0].get_clim() == (-2.0, 2.0)


def test_consistency_across_pairs():
    per_pair = np.array([[[1.0, 0.5, 0.0]], [[1.0, -0.4, 0.01]], [[1.0, 0.6, -0.01]]])
    r = pw.PatchResult(
        per_pair, ("layer", "pos"), {"layer": [0], "pos": [0, 1, 2]}, ["a", "b", "c"], np.ones(3), np.zeros(3)
    )
    np.testing.assert_allclose(r.spread()[0], per_pair.std(0)[0])
    assert r.sign_flips().tolist() == [[0, 1, 0]]  # the third cell's flips are below the tolerance
