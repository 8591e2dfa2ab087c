"""ONNX export: parity with torch, the embedded sidecar, OnnxPredictor, serving the exported file.

References: the torch model's logits (fp32), onnx.checker, a raw onnxruntime session, a NumPy
softmax, and the checkpoint's own cell table.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from geovit.checkpoint import CONTRACT_KEYS, load_checkpoint, set_temperature
from geovit.cli import app
from geovit.errors import GeovitError
from geovit.export import export_onnx
from geovit.heads import HEADS
from geovit.onnxmodel import METADATA_KEY, OnnxPredictor, load_predictor, sidecar_path
from geovit.predictor import Predictor
from geovit.serve import create_app

TEMPERATURE = 1.7


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint with temperature TEMPERATURE, model.onnx) exported through the CLI."""
    folder = tmp_path_factory.mktemp("export")
    ckpt = Path(shutil.copy(tiny_checkpoint, folder / "model.pt"))
    set_temperature(ckpt, TEMPERATURE)
    out = folder / "model.onnx"
    res = CliRunner().invoke(
        app, ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    return ckpt, out


def embedded(path: Path) -> dict:
    """The sidecar JSON in a model's metadata_props, read with onnx (not geovit)."""
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props[METADATA_KEY])


def test_export_writes_one_valid_model_with_its_sidecar_embedded(exported, tiny_image_size):
    ckpt, out = exported
    # one file: no separate sidecar that a kill could pair with another export, no temp files
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.pt"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [
        3,
        tiny_image_size,
        tiny_image_size,
    ]
    meta = embedded(out)
    loaded = load_checkpoint(ckpt)
    assert meta["image_size"] == tiny_image_size
    assert meta["temperature"] == pytest.approx(TEMPERATURE)
    assert tuple(meta["mean"]) == loaded.mean and tuple(meta["std"]) == loaded.std
    pd.testing.assert_frame_equal(pd.DataFrame(meta["cells"]), loaded.cells.to_frame())
    # The sidecar is the checkpoint contract minus the weights (the .onnx file holds those).
    assert set(CONTRACT_KEYS) - set(meta) == {"state_dict"}
    assert meta["train"] == loaded.train


def test_onnx_logits_match_torch_for_any_batch(exported, tiny_image_size):
    ckpt, out = exported
    model = load_checkpoint(ckpt).model
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, tiny_image_size, tiny_image_size, generator=gen)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-3
        top5 = lambda a: np.argsort(-a, axis=1, kind="stable")[:, :5]  # noqa: E731
        np.testing.assert_array_equal(top5(got), top5(ref))


def test_baseline_archs_export_and_match_torch(baseline_checkpoint, photos, tmp_path):
    out = export_onnx(baseline_checkpoint, tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(str(out)))
    torch_pred = Predictor.from_checkpoint(baseline_checkpoint, device="cpu")
    onnx_pred = OnnxPredictor.from_onnx(out)
    assert embedded(out)["model_config"]["arch"] in ("cnn", "vit")
    for a, b in zip(torch_pred.predict(photos), onnx_pred.predict(photos), strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_onnx_predictor_matches_torch_predictor(exported, photos):
    ckpt, out = exported
    torch_pred, onnx_pred = (
        Predictor.from_checkpoint(ckpt, device="cpu"),
        OnnxPredictor.from_onnx(out),
    )
    assert list(onnx_pred.cells.tokens) == list(torch_pred.cells.tokens)
    for a, b in zip(torch_pred.predict(photos), onnx_pred.predict(photos), strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        assert (a.best_lat, a.best_lon) == (b.best_lat, b.best_lon)


def test_cli_predict_runs_the_onnx_model(exported, photos):
    ckpt, out = exported
    runs = {
        flag: CliRunner().invoke(
            app, ["predict", flag, str(path), "--format", "json", "-k", "3", *map(str, photos)]
        )
        for flag, path in (("--checkpoint", ckpt), ("--onnx", out))
    }
    for res in runs.values():
        assert res.exit_code == 0, res.output
    torch_out, onnx_out = (json.loads(runs[f].stdout) for f in ("--checkpoint", "--onnx"))
    assert [[c["token"] for c in r["top_k"]] for r in onnx_out] == [
        [c["token"] for c in r["top_k"]] for r in torch_out
    ]
    both = CliRunner().invoke(app, ["predict", "--onnx", str(out), "-c", str(ckpt), str(photos[0])])
    assert both.exit_code == 2 and "exactly one" in both.output


def test_cli_predict_onnx_imports_no_torch_and_matches_torch(exported, photos):
    """`geovit predict --onnx` in a fresh interpreter: after it, neither torch, timm nor
    lightning is in sys.modules, and its probabilities are the torch Predictor's."""
    ckpt, out = exported
    probe = (
        "import json, sys\nfrom geovit.cli import main\n"
        f"sys.argv = ['geovit', 'predict', '--onnx', {str(out)!r}, '--format', 'json', "
        f"'-k', '5', *{[str(p) for p in photos]!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    *body, modules = res.stdout.strip().splitlines()
    heavy = [m for m in json.loads(modules) if m.split(".")[0] in ("torch", "timm", "lightning")]
    assert heavy == []
    ref = Predictor.from_checkpoint(ckpt, device="cpu").predict(photos, top_k=5)
    got = json.loads("\n".join(body))
    assert [r["image"] for r in got] == [str(p) for p in photos]
    for a, b in zip(ref, got, strict=True):
        assert a.tokens == [c["token"] for c in b["top_k"]]
        np.testing.assert_allclose(a.probs, [c["probability"] for c in b["top_k"]], atol=1e-5)


def test_onnx_predictor_applies_the_sidecar_temperature(exported, tiny_image_size):
    _, out = exported
    pred = OnnxPredictor.from_onnx(out, threads=1)
    x = torch.randn(2, 3, tiny_image_size, tiny_image_size)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    z = session.run(None, {"image": x.numpy()})[0].astype(np.float64) / TEMPERATURE
    ref = np.exp(z - z.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(pred.predict_proba(x)), ref, atol=1e-6)


def test_server_runs_the_onnx_model(exported, photos):
    ckpt, out = exported
    data = photos[0].read_bytes()
    ref = Predictor.from_checkpoint(ckpt, device="cpu").predict(Image.open(io.BytesIO(data)))
    with TestClient(create_app(load_predictor(out))) as client:
        assert client.get("/health").json()["backend"] == "OnnxPredictor"
        files = {"image": ("a.jpg", data, "image/jpeg")}
        body = client.post("/predict", files=files).json()
        assert [c["token"] for c in body["top_k"]] == ref.tokens
        heat = client.post("/explain", params={"stride": 16}, files=files)
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"


def test_export_and_load_errors_are_one_line(exported, tmp_path):
    ckpt, out = exported
    with pytest.raises(GeovitError, match=r"must end in \.onnx"):
        export_onnx(ckpt, tmp_path / "model.bin")
    lonely = tmp_path / "lonely.onnx"
    model = onnx.load(str(out))
    del model.metadata_props[:]
    onnx.save(model, str(lonely))
    with pytest.raises(GeovitError, match="no geovit metadata"):
        OnnxPredictor.from_onnx(lonely)
    with pytest.raises(GeovitError, match="does not exist"):
        load_predictor(tmp_path / "missing.onnx")
    assert type(load_predictor(ckpt)) is Predictor
    res = CliRunner().invoke(app, ["export", "-c", str(tmp_path / "nope.pt"), "-o", str(lonely)])
    assert res.exit_code == 2 and "does not exist" in res.output


def _with_metadata(src: Path, dst: Path, **changes) -> Path:
    model = onnx.load(str(src))
    meta = {**embedded(src), **changes}
    (prop,) = [p for p in model.metadata_props if p.key == METADATA_KEY]
    prop.value = json.dumps(meta)
    onnx.save(model, str(dst))
    return dst


def test_onnx_load_checks_logits_against_cells_and_preprocessing(exported, tmp_path):
    _, out = exported
    cells = pd.DataFrame(embedded(out)["cells"])
    fewer = cells.iloc[:-1].to_dict(orient="list")
    bad = _with_metadata(out, tmp_path / "fewer.onnx", cells=fewer)
    with pytest.raises(GeovitError, match=f"{len(cells) - 1} cells") as err:
        OnnxPredictor.from_onnx(bad)
    assert "\n" not in str(err.value)
    for change, match in (
        ({"image_size": 7}, "7px images"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"temperature": float("nan")}, "temperature"),
    ):
        with pytest.raises(GeovitError, match=match):
            OnnxPredictor.from_onnx(_with_metadata(out, tmp_path / "bad.onnx", **change))


def test_onnx_load_still_reads_an_old_separate_sidecar(exported, tmp_path):
    _, out = exported
    old = tmp_path / "old.onnx"
    model = onnx.load(str(out))
    del model.metadata_props[:]
    onnx.save(model, str(old))
    sidecar_path(old).write_text(json.dumps(embedded(out)))
    assert list(OnnxPredictor.from_onnx(old).cells.tokens) == embedded(out)["cells"]["token"]


def test_cli_serve_defaults_to_loopback_and_takes_an_onnx_model(exported, monkeypatch):
    """`geovit serve` wiring: the app it would run (uvicorn is replaced) serves the model."""
    import geovit.serve

    _, out = exported
    started = {}
    monkeypatch.setattr(geovit.serve, "run", lambda app, host, port: started.update(locals()))
    res = CliRunner().invoke(app, ["serve", "--checkpoint", str(out), "--max-mb", "1"])
    assert res.exit_code == 0, res.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8000
    with TestClient(started["app"]) as client:
        health = client.get("/health").json()
    assert health["backend"] == "OnnxPredictor" and health["max_bytes"] == 1_000_000


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_exports_all_its_outputs(head, tiny_cells, tmp_path):
    """Each registered head, with a coarser partition: the ONNX file returns the torch model's
    logits (the hierarchy combined), the head's other outputs and the embedding, by name."""
    from geovit.cells import CellPartition
    from geovit.checkpoint import save_checkpoint
    from geovit.model import GeoViT, model_config

    cells = CellPartition.load(tiny_cells)
    coarse = CellPartition.build(cells.centroid_lat, cells.centroid_lon, t1=10, t2=1, max_level=3)
    cfg = model_config("small", len(cells), image_size=32, head=head,
                       extra_classes=[len(coarse)])  # fmt: skip
    torch.manual_seed(0)
    model = GeoViT(cfg).eval()
    model.head.set_parents([torch.from_numpy(cells.parents_in(coarse))])
    ckpt = save_checkpoint(tmp_path / "model.pt", model, cells, extra_cells=[coarse])
    out = export_onnx(ckpt, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"image": x.numpy()}), strict=True))
    with torch.no_grad():
        want = model.forward_outputs(x)
    assert names[0] == "logits" and set(names) == {*HEADS[head].outputs, "embedding"}
    for name in names:
        np.testing.assert_allclose(got[name], want[name].numpy(), rtol=1e-4, atol=1e-4)
    assert embedded(out)["outputs"] == names
