"""Procrustes shape distances (Williams et al. 2021) and the bounded score of Cloos et al. 2024.

All three are functions of the normalised Bures similarity (:func:`encoders.similarity.bures.nbs`):
after centring each representation and scaling it to unit Frobenius norm, the best orthogonal
alignment Q (a partial isometry when widths differ, i.e. zero-padding the narrower one) gives
max_Q <X̂ Q, Ŷ> = ||X̂ᵀ Ŷ||_* = NBS.
"""

from __future__ import annotations

import math

from torch import Tensor

from encoders.similarity.bures import nbs
from encoders.similarity.centering import safe_arccos, safe_sqrt


def procrustes_angular(X: Tensor, Y: Tensor) -> Tensor:
    """Angular Procrustes distance θ = arccos(NBS) in radians, in [0, π/2]. Lower = more similar.

    Symmetric; a metric on representations modulo translation, rotation and isotropic scaling.
    The gradient is set to 0 where NBS is within 1e-12 of 1 (X = Y), where arccos' is infinite.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    return safe_arccos(nbs(X, Y))


def procrustes_angular_score(X: Tensor, Y: Tensor) -> Tensor:
    """Angular Procrustes score 1 - 2θ/π in [0, 1], θ = arccos(NBS); higher = more similar.

    This is the bounded version used by Cloos et al. (2024) to compare with CKA. Symmetric.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    return 1.0 - procrustes_angular(X, Y) * (2.0 / math.pi)


def procrustes_euclidean(X: Tensor, Y: Tensor) -> Tensor:
    """Euclidean Procrustes distance sqrt(2 - 2·NBS) in [0, √2]; lower = more similar.

    Equals min_Q ||X̂ Q - Ŷ||_F where X̂ and Ŷ are X and Y centred over stimuli and scaled to unit Frobenius norm; Q ranges over
    orthogonal maps (a partial isometry if the widths differ, equivalent to zero-padding the
    narrower representation). Symmetric. The gradient is 0 where the distance is below 1e-6
    (X = Y), where sqrt' is infinite.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    return safe_sqrt(2.0 - 2.0 * nbs(X, Y))
