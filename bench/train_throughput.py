"""GeoViT throughput: training steps (forward + backward + AdamW) and inference, in images/s.

For each preset, fp32 is the baseline; bf16 autocast and bf16 + channels_last are reported as
ratios to it, measured in the same run. Random inputs (the data pipeline is benchmarked apart).

    uv run python bench/train_throughput.py            # both presets, ~2.5 min on 2 CPU cores
    uv run python bench/train_throughput.py --quick    # fewer iterations
    uv run python bench/train_throughput.py --device cuda --batch-seed 64

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from geovit.model import GeoViT, model_config

MODES = {  # name: (autocast dtype or None, channels_last)
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "bf16+channels_last": (torch.bfloat16, True),
}
NUM_CLASSES = 2199  # the design's cell count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model copy per mode (own memory format, own AdamW state), timed step by step."""

    def __init__(self, base: GeoViT, mode: str, train: bool, batch: int, device) -> None:
        dtype, channels_last = MODES[mode]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.device, self.train, self.batch = device, train, batch
        self.model = copy.deepcopy(base).to(memory_format=fmt).train(train)
        size = base.config.image_size
        self.x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4) if train else None
        self.autocast = torch.autocast(
            device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        )
        self.times: list[float] = []

    def step(self, timed: bool) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        if self.train:
            with self.autocast:
                loss = F.cross_entropy(self.model(self.x).float(), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), self.autocast:
                self.model(self.x)
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - t0)


def measure(base: GeoViT, batch: int, train: bool, device, rounds: int, iters: int) -> dict:
    """images/s per mode: best and median step time over interleaved rounds.

    Modes take turns (round 1: fp32, bf16, ..., round 2: ...), so a burst of load from other
    processes on a shared machine hits every mode, and the best step shows the undisturbed speed.
    """
    runners = {mode: Runner(base, mode, train, batch, device) for mode in MODES}
    for r in runners.values():
        r.step(timed=False)  # warm-up: allocations, autocast caches, oneDNN kernels
    for _ in range(rounds):
        for r in runners.values():
            for _ in range(iters):
                r.step(timed=True)
    return {
        mode: (batch / min(r.times), batch / statistics.median(r.times))
        for mode, r in runners.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 2 timed steps per mode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", default="small,seed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch-small", type=int, default=16)
    ap.add_argument("--batch-seed", type=int, default=4)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        # on a busy shared CPU one thread per process avoids OpenMP threads waiting on each other
        torch.set_num_threads(args.threads)
    rounds, iters = (1, 2) if args.quick else (2, 2)
    load_before = os.getloadavg()[0]
    batches = {"small": args.batch_small, "seed": args.batch_seed}
    torch.manual_seed(0)

    results = []
    for preset in args.presets.split(","):
        base = GeoViT(model_config(preset, NUM_CLASSES)).to(device)
        for phase, train in (("train", True), ("inference", False)):
            speeds = measure(base, batches[preset], train, device, rounds, iters)
            fp32 = speeds["fp32"][0]
            for mode, (best, median) in speeds.items():
                results.append(
                    {
                        "preset": preset,
                        "image_size": base.config.image_size,
                        "phase": phase,
                        "mode": mode,
                        "batch": batches[preset],
                        "img_per_s": round(best, 2),
                        "img_per_s_median": round(median, 2),
                        "vs_fp32": round(best / fp32, 2),
                    }
                )
                print(
                    f"{preset:5s} {base.config.image_size:3d}px {phase:9s} {mode:18s} "
                    f"{best:8.2f} img/s (median {median:7.2f})  x{best / fp32:.2f} vs fp32",
                    flush=True,
                )
        del base

    machine = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # other processes compete for a shared CPU: say how busy it was
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps({"bench": "train_throughput", "machine": machine, "results": results}))


if __name__ == "__main__":
    main()
