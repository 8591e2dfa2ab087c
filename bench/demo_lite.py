"""Does the demo learn more with the lite preset's real ImageNet CNN weights than from scratch?

Runs the demo pipeline (geovit.demo.run_demo) twice on the same synthetic world, same budget
(epochs, image size, lr): the `small` preset from random weights and the `lite` preset with
EfficientNet-Lite0's packaged ImageNet weights (needs geovit[lite]). Reports test top-1, within
200 km, median km and wall time of each.

    uv run python bench/demo_lite.py              # a reduced world (n=2000, 3 epochs)
    uv run python bench/demo_lite.py --n 6000 --epochs 6   # the demo's own budget

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from geovit.demo import run_demo
from geovit.demo_settings import DemoSettings, stage_boundaries


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=DemoSettings.image_size)
    args = ap.parse_args()
    freeze, refreeze = stage_boundaries(args.epochs)
    base = DemoSettings(
        n=args.n, epochs=args.epochs, freeze_epochs=freeze, cnn_refreeze_epoch=refreeze,
        image_size=args.image_size, n_explain=0,
    )  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("small", "lite"):
            t0 = time.perf_counter()
            res = run_demo(Path(tmp) / preset, dataclasses.replace(base, preset=preset),
                           say=lambda _line: None)  # fmt: skip
            m = res.metrics
            results[preset] = {
                "top1": m["cell_accuracy"]["all_images"]["top1"],
                "within_200km": m["distance"]["accuracy_within_km"]["200"],
                "median_km": m["distance"]["median_km"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(preset, results[preset], flush=True)
    print(json.dumps({"settings": dataclasses.asdict(base) | {"preset": None}, **results},
                     default=str))  # fmt: skip


if __name__ == "__main__":
    main()
