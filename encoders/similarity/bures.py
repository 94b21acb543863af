"""Normalised Bures similarity (NBS) between two representations.

NBS is the fidelity between the stimulus-by-stimulus second-moment matrices of the centred
representations, which reduces to a nuclear norm of the cross-covariance (Williams et al. 2021;
Harvey et al. 2023; Cloos et al. 2024).
"""

from __future__ import annotations

from torch import Tensor

from encoders.similarity.centering import as_pair, center, nuclear_norm


def nbs(X: Tensor, Y: Tensor) -> Tensor:
    """Normalised Bures similarity NBS = ||Xcᵀ Yc||_* / (||Xc||_F ||Yc||_F).

    X and Y are centred over stimuli. Equals tr((Kx^½ Ky Kx^½)^½) / sqrt(tr Kx · tr Ky) for the
    centred Gram matrices Kx = Xc Xcᵀ, Ky = Yc Ycᵀ, i.e. the cosine of the angle between the two
    representations after the best orthogonal alignment (units of different widths are aligned
    by a partial isometry). Symmetric; in [0, 1]; 1 iff Yc = c Xc Q with Q orthogonal.
    The nuclear norm uses :func:`~encoders.similarity.centering.nuclear_norm`, whose gradient
    stays finite at X = Y, for rank-deficient inputs and for repeated singular values.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    X, Y = as_pair(X, Y)
    Xc, Yc = center(X), center(Y)
    return nuclear_norm(Xc.mT @ Yc) / (Xc.norm() * Yc.norm())
