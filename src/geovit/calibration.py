"""Temperature scaling: one scalar T so that softmax(logits / T) is calibrated (Guo et al., 2017).

The design found the model overconfident when right and diffuse when unsure; a single T fitted on
the validation split by minimum NLL fixes the first without changing any prediction's ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize_scalar

from geovit.errors import GeovitError
from geovit.metrics import expected_calibration_error, log_softmax

T_MIN, T_MAX = 0.01, 100.0


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature with the NLL and ECE it changes (all over the images used)."""

    temperature: float
    n_images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    at_bound: bool = False  # the optimum is at the search bound: the logits carry ~no signal


def nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T) at the true labels."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def _ece_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    top = logp.argmax(axis=1)
    return expected_calibration_error(np.exp(logp.max(axis=1)), top == labels)


def _labelled(
    logits: np.ndarray, labels: np.ndarray, task: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """The images with a cell (label >= 0) as float64 logits and int64 labels: images outside
    every cell carry no likelihood. Fails in one line when none is left."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        raise GeovitError(
            f"no images with a cell label to {task}; "
            f"check that {where} has images inside the checkpoint's cells"
        )
    return logits[keep], labels[keep]


def score_temperature(logits: np.ndarray, labels: np.ndarray, temperature: float) -> TemperatureFit:
    """NLL and ECE of softmax(logits / T) against T = 1 on these images (labelled ones only):
    how a temperature fitted elsewhere does here."""
    logits, labels = _labelled(logits, labels, "score a temperature on", "the split")
    return TemperatureFit(
        temperature=temperature,
        n_images=len(labels),
        nll_before=nll_at(logits, labels, 1.0),
        nll_after=nll_at(logits, labels, temperature),
        ece_before=_ece_at(logits, labels, 1.0),
        ece_after=_ece_at(logits, labels, temperature),
    )


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    tol: float = 1e-5,
    bounds: tuple[float, float] = (T_MIN, T_MAX),
) -> TemperatureFit:
    """Minimize the validation NLL over T on log T by scipy's bounded Brent search.

    NLL is convex in 1/T (a log-sum-exp plus a linear term), hence unimodal in log T, which is
    all a bounded scalar search needs. Images without a class (label -1) carry no likelihood and
    are left out.
    """
    logits, labels = _labelled(logits, labels, "fit a temperature on", "the --split")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    best = minimize_scalar(
        lambda log_t: nll_at(logits, labels, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": tol},
    )
    t = math.exp(float(best.x))
    edge = min(abs(math.log(t) - lo), abs(math.log(t) - hi))
    return replace(score_temperature(logits, labels, t), at_bound=edge < 10 * tol)
