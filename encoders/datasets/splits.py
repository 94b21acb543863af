"""Train/validation/test tiers of a session's images: a seeded rule, or labels given with the data.

The seeded rule (`split_tiers`, used by `prepare cowley2023`): the images are permuted by
`numpy.random.default_rng([seed, crc32(session id)])`; the first `test_fraction` of the permutation
is the test tier, the next `validation_fraction` the validation tier, the rest train.

`SplitRule` is the `split:` block of a `prepare table` session: either `column` (each image's tier
is read from the data) or the seeded rule, where by default every image shown more than once goes
to the test tier first and the fractions split the others with the same seeded permutation.
`assign_tiers` applies it and says what it did, for the session's "split" attribute.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from encoders.datasets.schema import TIERS


@dataclass
class SplitRule:
    """How a session's images are split into train, validation and test tiers.

    Args:
        column: name of a column holding each image's tier ("train", "validation" or "test"), in the
            responses table or the per-image metadata table; when given, the other keys are unused.
        seed: seed of the permutation (with the session id).
        test_fraction: share of the (non-repeated) images in the test tier; 0 only with repeats_to_test.
        validation_fraction: share of the (non-repeated) images in the validation tier.
        repeats_to_test: images with more than one presentation go to the test tier, and the
            fractions split the rest.
    """

    column: str | None = None
    seed: int = 0
    test_fraction: float = 0.1
    validation_fraction: float = 0.1
    repeats_to_test: bool = True

    def problem(self) -> tuple[str, str] | None:
        """(field, problem) of the first bad value, or None."""
        for name in ("test_fraction", "validation_fraction"):
            if not 0 <= getattr(self, name) < 1:
                return name, f"must be in [0, 1), got {getattr(self, name)}"
        if self.test_fraction + self.validation_fraction >= 1:
            return "test_fraction", "test_fraction + validation_fraction must be less than 1 (the train tier would be empty)"
        if self.validation_fraction == 0:
            return "validation_fraction", "must be above 0 (the validation tier would be empty)"
        if self.test_fraction == 0 and not self.repeats_to_test:
            return "test_fraction", "must be above 0 unless repeats_to_test puts repeated images in the test tier"
        return None


def split_tiers(n_images: int, session: str, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Deterministic train/validation/test labels for one session's images."""
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    return _seeded(n_images, session, validation_fraction, test_fraction, seed)


def _seeded(n_images: int, session: str, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """The seeded permutation split; a zero fraction gives an empty tier, any other at least one image."""
    rng = np.random.default_rng([seed, zlib.crc32(session.encode())])
    order = rng.permutation(n_images)
    n_test = max(1, round(test_fraction * n_images)) if test_fraction > 0 else 0
    n_val = max(1, round(validation_fraction * n_images)) if validation_fraction > 0 else 0
    tiers = np.full(n_images, "train", dtype=object)
    tiers[order[:n_test]] = "test"
    tiers[order[n_test : n_test + n_val]] = "validation"
    return tiers.astype(str)


def assign_tiers(rule: SplitRule, session: str, n_images: int, n_repeats: np.ndarray | None = None,
                 given: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(tiers, description) of one session's `n_images` images under `rule`.

    `n_repeats`: presentations per image (None: one each); `given`: the tier column's value per image
    (needed when `rule.column` is set). Raises ValueError on unknown tier labels or an empty tier.
    """
    if rule.column is not None:
        if given is None:
            raise ValueError(f"no tier column {rule.column!r} was given")
        tiers = np.asarray(given).astype(str)
        unknown = sorted(set(tiers.tolist()) - set(TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown[:5]}; allowed: {list(TIERS)}")
        description = f"column {rule.column!r}"
    else:
        repeated = np.zeros(n_images, bool)
        if n_repeats is not None and rule.repeats_to_test:
            repeated = np.asarray(n_repeats) > 1
        tiers = np.full(n_images, "test", dtype=object)
        tiers[~repeated] = _seeded(int((~repeated).sum()), session, rule.validation_fraction, rule.test_fraction, rule.seed)
        tiers = tiers.astype(str)
        description = (f"seed={rule.seed}, validation_fraction={rule.validation_fraction}, "
                       f"test_fraction={rule.test_fraction}, repeats_to_test={rule.repeats_to_test}")
        if rule.repeats_to_test:
            description += f" ({int(repeated.sum())} repeated images to test, the fractions split the other {int((~repeated).sum())})"
    empty = [tier for tier in TIERS if not (tiers == tier).any()]
    if empty:
        raise ValueError(f"tier(s) {empty} would be empty ({len(tiers)} images, split {description})")
    return tiers, description
