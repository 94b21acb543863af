"""Differentiable similarity measures between representations (Cloos et al. 2024).

Every measure takes X (stimuli, units_x) and Y (stimuli, units_y), casts both to float64 and
returns one scalar tensor. ``MEASURES`` maps a name to the function; ``HIGHER_IS_BETTER`` says
whether larger means more similar (False for the two Procrustes distances); ``DIFFERENTIABLE``
says whether the result carries a gradient (False only for ``rsa_spearman``, whose ranks are
piecewise constant: it is returned detached).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from encoders.similarity.bures import nbs
from encoders.similarity.cca import cca_mean, svcca
from encoders.similarity.cka import cka_linear, cka_linear_unbiased, cka_rbf
from encoders.similarity.procrustes import (
    procrustes_angular,
    procrustes_angular_score,
    procrustes_euclidean,
)
from encoders.similarity.regression import RidgeResult, ridge_cv, ridge_r2
from encoders.similarity.rsa import correlation_rdm, rsa_pearson, rsa_spearman

Measure = Callable[[Tensor, Tensor], Tensor]

MEASURES: dict[str, Measure] = {
    "cka_linear": cka_linear,
    "cka_linear_unbiased": cka_linear_unbiased,
    "cka_rbf": cka_rbf,
    "nbs": nbs,
    "procrustes_angular": procrustes_angular,
    "procrustes_angular_score": procrustes_angular_score,
    "procrustes_euclidean": procrustes_euclidean,
    "ridge_r2": ridge_r2,
    "rsa_pearson": rsa_pearson,
    "rsa_spearman": rsa_spearman,
    "cca_mean": cca_mean,
    "svcca": svcca,
}

HIGHER_IS_BETTER: dict[str, bool] = {name: True for name in MEASURES}
HIGHER_IS_BETTER["procrustes_angular"] = False
HIGHER_IS_BETTER["procrustes_euclidean"] = False

DIFFERENTIABLE: dict[str, bool] = {name: name != "rsa_spearman" for name in MEASURES}


def get_measure(name: str) -> Measure:
    """The registered measure called ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in MEASURES:
        known = ", ".join(sorted(MEASURES))
        raise ValueError(f"unknown similarity measure {name!r}; known: {known}")
    return MEASURES[name]


__all__ = [
    "DIFFERENTIABLE",
    "HIGHER_IS_BETTER",
    "MEASURES",
    "Measure",
    "RidgeResult",
    "cca_mean",
    "cka_linear",
    "cka_linear_unbiased",
    "cka_rbf",
    "correlation_rdm",
    "get_measure",
    "nbs",
    "procrustes_angular",
    "procrustes_angular_score",
    "procrustes_euclidean",
    "ridge_cv",
    "ridge_r2",
    "rsa_pearson",
    "rsa_spearman",
    "svcca",
]
