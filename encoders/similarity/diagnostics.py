"""Similarity-score diagnostics of a trained encoding model on each session's test images.

For every session and every chosen measure (:data:`encoders.similarity.MEASURES`), the recorded
test responses (stimuli x neurons, averaged over repeats) are compared with

- ``layer="output"``: the model's predicted rates (stimuli x neurons);
- ``layer="layer<i>"``: the i-th core layer's features (``model.layer_features``), reduced
  as described in :func:`reduce_features`;

next to three baselines (the ``baseline`` dimension):

- ``model``: the trained model itself;
- ``random_init``: a model of the same architecture and config, freshly initialised with ``seed``
  (for a task-driven core with ``weights_path`` that is the pretrained frozen ResNet with a fresh
  head and readout: the same state training started from);
- ``shuffled``: the trained model against the responses with their stimulus rows permuted
  (seeded): the score expected of a representation with no stimulus-specific relation to the data;
- ``ceiling``: the data's split-half consistency, see :func:`split_half`. It only depends on the
  data, so it is the same number for every layer (repeated along ``layer``); NaN for sessions
  without single trials.

Beside the scores, what they mean per principal component (Cloos et al. 2024): for the top
``components`` PCs of the recorded test responses (the Y of each comparison), ``pc_explained``
is the fraction of each PC's variance the representation explains (5-fold cross-validated R² of
a linear regression with intercept,
:data:`encoders.similarity.captured.CROSS_VALIDATED_DEFINITION`: in-sample, p features explain
about p / n_stimuli of any PC by chance), and ``pcs_captured`` counts the PCs explained at or
above ``capture_threshold``.

Everything is computed in float64 on CPU (the features are extracted on the model's device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from encoders.similarity import HIGHER_IS_BETTER, get_measure
from encoders.similarity.captured import CROSS_VALIDATED_DEFINITION, cross_validated_explained_per_pc

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording

DEFAULT_MEASURES: tuple[str, ...] = (
    "cka_linear",
    "cka_linear_unbiased",
    "nbs",
    "procrustes_angular_score",
    "ridge_r2",
    "rsa_pearson",
    "rsa_spearman",
)
BASELINES: tuple[str, ...] = ("model", "random_init", "shuffled", "ceiling")
BASELINE_DOCS: dict[str, str] = {
    "model": "the trained model vs the recorded test responses (averaged over repeats)",
    "random_init": "a freshly initialised model of the same architecture and config (torch seed = seed) vs the "
                   "recorded responses, with the same feature reduction",
    "shuffled": "the trained model vs the recorded responses with stimulus rows permuted "
                "(numpy default_rng([seed, session index, 0]))",
    "ceiling": "split-half data ceiling: each test image's valid repeats are randomly split into two halves of "
               "k//2 repeats each (odd leftover dropped; numpy default_rng([seed, session index, 1])), each half "
               "averaged, and measure(half A, half B) computed on the images with >= 2 repeats. It is the "
               "consistency of half-size averages, so it understates the reliability of the full average the "
               "model is scored against (no Spearman-Brown correction: it has no meaning for most measures). "
               "Data-only, so repeated for every layer; NaN for sessions without single trials",
}


def reduce_features(features: Tensor, pool_size: int, projection: Tensor | None) -> Tensor:
    """(B, C, h, w) feature maps -> (B, d) float32: adaptive average pooling, then a fixed projection.

    Pooling to a ``pool_size`` x ``pool_size`` grid (never upsampling a smaller map) keeps coarse
    spatial layout, which matters for V4 neurons with local receptive fields, while bringing C*h*w
    down to C*grid. ``projection`` (C*grid, k) is a fixed Gaussian random matrix scaled by 1/sqrt(k)
    (Johnson-Lindenstrauss: inner products, hence Gram matrices, are preserved in expectation); None
    when C*grid already fits.
    """
    h, w = features.shape[-2:]
    pooled = F.adaptive_avg_pool2d(features.float(), (min(pool_size, h), min(pool_size, w))).flatten(1)
    return pooled if projection is None else pooled @ projection


def random_projection(n_in: int, max_features: int, seed: int, layer: int, device: torch.device) -> Tensor | None:
    """The fixed (n_in, max_features) projection of layer ``layer``, or None if n_in <= max_features."""
    if n_in <= max_features:
        return None
    rng = np.random.default_rng([seed, 2, layer])  # own stream: independent of shuffle and split
    matrix = rng.standard_normal((n_in, max_features)) / math.sqrt(max_features)
    return torch.as_tensor(matrix, dtype=torch.float32, device=device)


def split_half(trials: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Average two random disjoint halves of each image's repeats.

    Args:
        trials: (N, R, neurons) single-trial responses, NaN for missing repeats.
        seed: seeds the split (numpy ``default_rng(seed)``; a sequence of ints is accepted too).

    Returns:
        half_a, half_b: (M, neurons) float64 means of k//2 repeats each, where k is an image's number
        of valid repeats (a repeat is valid when any neuron is finite; an odd leftover repeat is
        dropped so both halves are equally noisy); kept: (N,) bool, the M images with k >= 2 whose
        halves are finite for every neuron.
    """
    if trials.ndim != 3:
        raise ValueError(f"trials must be (images, repeats, neurons), got shape {tuple(trials.shape)}")
    t = trials.detach().to("cpu", torch.float64)
    valid = torch.isfinite(t).any(2)  # (N, R)
    keys = torch.as_tensor(np.random.default_rng(seed).random(valid.shape))
    keys[~valid] = math.inf  # invalid repeats sort last
    rank = keys.argsort(1).argsort(1)  # position of each repeat in the image's random order
    half = (valid.sum(1, keepdim=True) // 2)  # (N, 1)
    in_a = rank < half
    in_b = (rank >= half) & (rank < 2 * half)

    def mean_of(mask: Tensor) -> Tensor:
        selected = torch.where(mask[:, :, None] & torch.isfinite(t), t, torch.zeros((), dtype=t.dtype))
        count = (mask[:, :, None] & torch.isfinite(t)).sum(1)
        return selected.sum(1) / count  # 0/0 = NaN where a neuron has no finite repeat in the half

    a, b = mean_of(in_a), mean_of(in_b)
    kept = (half[:, 0] >= 1) & torch.isfinite(a).all(1) & torch.isfinite(b).all(1)
    return a[kept], b[kept], kept


def random_init_like(model: nn.Module, seed: int) -> nn.Module:
    """An Encoder of the same architecture and data-derived shapes (`model.spec()`), initialised with torch seed `seed`.

    The global RNG is forked so that building it does not change the caller's random stream.
    """
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(**model.spec())
    return fresh.to(device).eval()


@torch.no_grad()
def _representations(
    model: nn.Module, images: Tensor, session: str, layers: bool, batch_size: int,
    pool_size: int, projections: dict[int, Tensor | None], max_features: int, seed: int,
) -> list[Tensor]:
    """[predictions, reduced layer0, layer1, ...], each (N, d) float64 on CPU."""
    device = next(model.parameters()).device
    parts: list[list[Tensor]] = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        outputs = [model(x, session).float()]
        if layers:
            for i, features in enumerate(model.layer_features(x)):
                if i not in projections:  # the first batch fixes each layer's projection for all sessions
                    n_in = features.shape[1] * min(pool_size, features.shape[2]) * min(pool_size, features.shape[3])
                    projections[i] = random_projection(n_in, max_features, seed, i, device)
                outputs.append(reduce_features(features, pool_size, projections[i]))
        parts.append([o.cpu() for o in outputs])
    return [torch.cat(column).double() for column in zip(*parts)]


def _score(name: str, X: Tensor, Y: Tensor, where: str, notes: dict[str, None]) -> float:
    try:
        return float(get_measure(name)(X, Y))
    except (ValueError, torch.linalg.LinAlgError) as error:
        # e.g. ridge_r2 needs enough stimuli for 5 x 5 folds; one NaN, not a failed run
        notes[f"{name} on {where}: {error}"] = None
        return math.nan


def hash_seed(parts: list[int]) -> int:
    """One integer seed from several (numpy's SeedSequence), for torch generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _variance_ratio(responses: Tensor) -> np.ndarray:
    """Fraction of the centred responses' total variance in each principal component (decreasing)."""
    centred = responses - responses.mean(0)
    variance = torch.linalg.svdvals(centred).pow(2)
    total = variance.sum()
    return (variance / total).numpy() if total > 0 else np.zeros(0)


def similarity_diagnostics(
    model: nn.Module,
    recording: Recording,
    measures: Sequence[str] = DEFAULT_MEASURES,
    layers: bool = True,
    seed: int = 0,
    max_features: int = 256,
    pool_size: int = 4,
    batch_size: int = 256,
    components: int = 10,
    capture_threshold: float = 0.5,
) -> xr.Dataset:
    """Similarity of the model's predictions and core layers with the recorded test responses.

    Args:
        model: an :class:`~encoders.encoder.Encoder` (put in eval mode here).
        recording: a set-up :class:`~encoders.datasets.recording.Recording` with the
            model's sessions (its ``tier_data(session, "test")`` is used).
        measures: names in :data:`encoders.similarity.MEASURES`.
        layers: also score every core layer (``model.layer_features``), not only the output.
        seed: seeds random_init, the shuffle, the split-half ceiling and the feature projections.
        max_features: at most this many features per core layer (random projection above it).
        pool_size: core feature maps are average-pooled to at most pool_size x pool_size.
        batch_size: images per forward pass.
        components: number k of top PCs of the responses followed by ``pc_explained``.
        capture_threshold: explained variance in (0, 1] at which a PC counts as captured.

    Returns:
        Dataset with ``score`` (measure, layer, baseline, session); coordinates ``measure``,
        ``layer`` ("output", "layer0", ...), ``baseline`` (:data:`BASELINES`), ``session``, plus
        ``higher_is_better`` (measure), ``n_features`` (layer), ``n_stimuli``, ``n_neurons`` and
        ``ceiling_stimuli`` (session); ``pc_explained`` (layer, baseline, component, session: the
        fraction of each of the responses' top k PCs' variance that the representation explains,
        NaN past the responses' rank), ``pcs_captured`` (layer, baseline, session: how many of
        those reach ``capture_threshold``) and ``pc_variance_ratio`` (component, session). attrs document the baselines, the feature reduction, the
        seed and any measure that could not be computed (``notes``).
    """
    measures = list(measures)
    if not measures:
        raise ValueError("measures must name at least one similarity measure")
    for name in measures:
        get_measure(name)  # unknown names fail before any work
    if len(set(measures)) != len(measures):
        raise ValueError(f"measures has duplicates: {measures}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if not 0.0 < capture_threshold <= 1.0:
        raise ValueError(f"capture_threshold must be in (0, 1], got {capture_threshold}")
    if max_features < 1 or pool_size < 1 or batch_size < 1:
        raise ValueError(f"max_features, pool_size and batch_size must be >= 1, got {max_features}, {pool_size}, {batch_size}")
    sessions = list(model.sessions)
    missing = [s for s in sessions if s not in recording.sessions]
    if missing:
        raise ValueError(f"the recording lacks the model's session(s) {missing}; it has {recording.sessions}")

    model.eval()
    baseline_model = random_init_like(model, seed)
    projections: dict[int, Tensor | None] = {}
    notes: dict[str, None] = {}
    score: np.ndarray | None = None
    explained: np.ndarray | None = None
    variance_ratio = np.full((components, len(sessions)), np.nan)
    layer_names: list[str] = []
    n_features: list[int] = []
    n_stimuli, n_neurons, ceiling_stimuli = [], [], []

    for s, session in enumerate(sessions):
        data = recording.tier_data(session, "test")
        images, responses = data["images"], data["responses"].double()
        args = (layers, batch_size, pool_size, projections, max_features, seed)
        trained = _representations(model, images, session, *args)
        fresh = _representations(baseline_model, images, session, *args)
        if score is None:
            layer_names = ["output"] + [f"layer{i}" for i in range(len(trained) - 1)]
            n_features = [r.shape[1] for r in trained]
            score = np.full((len(measures), len(layer_names), len(BASELINES), len(sessions)), np.nan)
            explained = np.full((len(layer_names), len(BASELINES), components, len(sessions)), np.nan)
        permutation = torch.as_tensor(np.random.default_rng([seed, s, 0]).permutation(responses.shape[0]))
        shuffled = responses[permutation]
        halves = None
        if "trials" in data:
            half_a, half_b, kept = split_half(data["trials"], [seed, s, 1])
            halves = (half_a, half_b) if kept.sum() >= 2 else None
            ceiling_stimuli.append(int(kept.sum()))
        else:
            ceiling_stimuli.append(0)
        n_stimuli.append(int(responses.shape[0]))
        n_neurons.append(int(responses.shape[1]))

        ratio = _variance_ratio(responses)[:components]
        variance_ratio[: len(ratio), s] = ratio
        folds = [seed, s, 2]  # the same folds for every layer and baseline of a session
        for layer, (x_trained, x_fresh) in enumerate(zip(trained, fresh)):
            explained[layer, 0, :, s] = cross_validated_explained_per_pc(responses, x_trained, components, seed=hash_seed(folds))
            explained[layer, 1, :, s] = cross_validated_explained_per_pc(responses, x_fresh, components, seed=hash_seed(folds))
            explained[layer, 2, :, s] = cross_validated_explained_per_pc(shuffled, x_trained, components, seed=hash_seed(folds))
        if halves is not None:
            explained[:, 3, :, s] = cross_validated_explained_per_pc(halves[1], halves[0], components, seed=hash_seed(folds))
        for m, name in enumerate(measures):
            for layer, (x_trained, x_fresh) in enumerate(zip(trained, fresh)):
                where = f"session {session}, {layer_names[layer]}"
                score[m, layer, 0, s] = _score(name, x_trained, responses, where, notes)
                score[m, layer, 1, s] = _score(name, x_fresh, responses, f"{where}, random_init", notes)
                score[m, layer, 2, s] = _score(name, x_trained, shuffled, f"{where}, shuffled", notes)
            if halves is not None:
                score[m, :, 3, s] = _score(name, *halves, f"session {session}, ceiling", notes)

    with np.errstate(invalid="ignore"):
        captured = (explained >= capture_threshold).sum(2)
    captured = np.where(np.isfinite(explained).any(2), captured, -1)  # -1: not computed (no ceiling)
    return xr.Dataset(
        {
            "score": (("measure", "layer", "baseline", "session"), score),
            "pc_explained": (("layer", "baseline", "component", "session"), explained, {
                "long_name": "fraction of the variance of the responses' i-th principal component explained by the "
                             "representation (5-fold cross-validated R^2)",
                "units": "1", "definition": CROSS_VALIDATED_DEFINITION}),
            "pcs_captured": (("layer", "baseline", "session"), captured.astype(np.int64), {
                "long_name": f"number of the top {components} principal components of the responses explained at "
                             f"or above {capture_threshold} (-1: not computed)",
                "units": "1"}),
            "pc_variance_ratio": (("component", "session"), variance_ratio, {
                "long_name": "fraction of the responses' total variance in the principal component", "units": "1"}),
        },
        coords={
            "measure": measures,
            "layer": layer_names,
            "baseline": list(BASELINES),
            "session": sessions,
            "component": np.arange(1, components + 1),
            "higher_is_better": ("measure", [bool(HIGHER_IS_BETTER[m]) for m in measures]),
            "n_features": ("layer", np.asarray(n_features, dtype=np.int64)),
            "n_stimuli": ("session", np.asarray(n_stimuli, dtype=np.int64)),
            "n_neurons": ("session", np.asarray(n_neurons, dtype=np.int64)),
            "ceiling_stimuli": ("session", np.asarray(ceiling_stimuli, dtype=np.int64)),
        },
        attrs={
            "description": "similarity of model representations with recorded test responses (stimuli x neurons, "
                           "averaged over repeats); X = model representation, Y = responses (matters for the "
                           "asymmetric ridge_r2)",
            **{f"baseline_{name}": doc for name, doc in BASELINE_DOCS.items()},
            "layers": "output = predicted rates; layer<i> = model.layer_features(images)[i], reduced",
            "feature_reduction": f"adaptive average pooling to at most {pool_size}x{pool_size} per channel, "
                                 f"flattened; if more than {max_features} features, times a fixed Gaussian random "
                                 f"matrix / sqrt({max_features}) drawn with numpy default_rng([seed, 2, layer index]), "
                                 "the same for the trained and random_init model",
            "higher_is_better": ", ".join(f"{m}: {HIGHER_IS_BETTER[m]}" for m in measures),
            "seed": int(seed),
            "max_features": int(max_features),
            "pool_size": int(pool_size),
            "tier": "test",
            "components": int(components),
            "capture_threshold": float(capture_threshold),
            "pc_explained": "target = the responses of each comparison (ceiling: half B), explained by the "
                            "representation (ceiling: half A); PCs of the centred target by decreasing variance",
            "notes": "; ".join(notes) if notes else "none",
        },
    )


__all__ = [
    "BASELINES",
    "DEFAULT_MEASURES",
    "random_init_like",
    "reduce_features",
    "similarity_diagnostics",
    "split_half",
]
