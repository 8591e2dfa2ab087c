"""CLI and API conventions: --version, a light start, the Python API (predict -> DataFrame,
evaluate -> metrics dict)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import geovit
from geovit.cli import app
from geovit.errors import GeovitError
from geovit.predictor import Predictor

HEAVY = ("pandas", "torch", "timm", "pyarrow", "matplotlib", "lightning")


def test_version_flag():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == geovit.__version__


def _imported_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_library():
    """`geovit --help` builds the whole command tree; it must not import pandas/torch (the
    start-up time they cost is measured in bench/, not here)."""
    mods = _imported_after(
        "from geovit.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not [m for m in HEAVY if m in mods]


def test_python_api_predict_returns_a_dataframe(tiny_checkpoint, tiny_world):
    folder = tiny_world / "images" / "test"
    df = geovit.predict(tiny_checkpoint, folder, top_k=3)
    photos = sorted(str(p) for p in folder.glob("*.jpg"))
    assert sorted(df["image"].unique()) == photos and len(df) == 3 * len(photos)
    ref = Predictor.from_checkpoint(tiny_checkpoint).predict(photos[0], top_k=3)
    one = df[df["image"] == photos[0]].sort_values("rank")
    assert one["token"].tolist() == ref.tokens
    np.testing.assert_allclose(one["probability"], ref.probs, rtol=1e-5)
    with pytest.raises(GeovitError, match="no such file"):
        geovit.predict(tiny_checkpoint, tiny_world / "missing.jpg")


def test_python_api_evaluate_is_the_cli_metrics(tiny_checkpoint, tiny_world, tmp_path):
    m = geovit.evaluate(tiny_checkpoint, tiny_world, "test", batch_size=32)
    res = CliRunner().invoke(
        app, ["evaluate", "-c", str(tiny_checkpoint), "-d", str(tiny_world), "-o", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    written = json.loads((tmp_path / "metrics.json").read_text())
    for view in ("all_images", "in_cell_images"):
        assert m["cell_accuracy"][view] == pytest.approx(written["cell_accuracy"][view])
    assert m["distance"]["median_km"] == pytest.approx(written["distance"]["median_km"])
