"""Generating the synthetic V4 twin: drawing and calibrating the true neurons, sessions, the file.

:func:`generate_ground_truth` (:meth:`GroundTruthV4.generate`) draws a population from a seed and
calibrates it on natural images. :func:`make_twin` draws natural-image crops for each session,
splits them into tiers and samples Poisson spike counts from the true rates; :func:`write_twin`
writes the sessions and the ground truth to one data file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encoders.datasets.io import write_dataset
from encoders.datasets.natural_images import natural_image_pool, source_image_names
from encoders.datasets.schema import SessionData
from encoders.twin.neurons import (
    CHUNK,
    COARSE0,
    FINE0,
    FINE_WAVELENGTH,
    FORMAT_VERSION,
    GRID_STRIDE,
    GROUND_TRUTH_FORMAT,
    LUMINANCE0,
    MAX_OFFSET,
    N_CHANNELS,
    N_COMPONENTS,
    N_ORIENTATIONS,
    POLARITY0,
    POLARITY_ORIENTATIONS,
    SELECTIVITY_TYPES,
    GroundTruthV4,
    _gabor_bank,
    ground_truth_response,
    orientation_degrees,
)


def _subseed(seed: int, stream: int) -> int:
    """An independent integer seed for one random stream of a twin."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def generate_ground_truth(cls: type[GroundTruthV4], n_neurons: int, image_size: int, seed: int, n_features: int = 12,
                          n_calibration_images: int = 512) -> GroundTruthV4:
    """:meth:`GroundTruthV4.generate`: draw a population from ``seed`` and calibrate it on natural images."""
    if n_neurons < 1:
        raise ValueError(f"n_neurons must be >= 1, got {n_neurons}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if n_features < 2:
        raise ValueError(f"n_features must be >= 2, got {n_features}")
    if n_calibration_images < 16:
        raise ValueError("n_calibration_images must be >= 16")
    if image_size < 16 or image_size % GRID_STRIDE:
        raise ValueError(f"image_size must be a multiple of {GRID_STRIDE} and >= 16, "
                         f"got {image_size}")
    rng = np.random.default_rng(_subseed(seed, 0))
    arrays = _draw_population(rng, n_neurons, n_features, image_size)
    arrays["seed"] = np.asarray(seed, np.int64)
    calibration = natural_image_pool(n_calibration_images, image_size, _subseed(seed, 1))
    return _calibrate(cls, arrays, calibration, rng)


# ------------------------------------------------------------------------ random population
def _direction(orientation_index: int) -> tuple[float, float]:
    """Unit vector along the stripes of an orientation, as (d_row, d_col) on the grid."""
    phi = math.radians(orientation_degrees()[orientation_index % N_ORIENTATIONS])
    return -math.sin(phi), math.cos(phi)


def _offset(d_row: float, d_col: float) -> tuple[int, int]:
    def clip(v: float) -> int:
        return int(np.clip(np.rint(v), -MAX_OFFSET, MAX_OFFSET))
    return clip(d_row), clip(d_col)


def _template(rng: np.random.Generator, kind: str
              ) -> tuple[list[tuple[int, int, int, float]], int, float]:
    """Components ``(channel, d_row, d_col, weight)`` of one conjunction feature, with its
    main orientation index and wavelength (px)."""
    ori = int(rng.integers(N_ORIENTATIONS))
    coarse = bool(rng.random() < 0.5)
    base = COARSE0 if coarse else FINE0
    wavelength = FINE_WAVELENGTH * (2 if coarse else 1)
    reach = 1
    comps: list[tuple[int, int, int, float]] = []
    if kind == "corner":
        # Two arms meeting at a vertex, end-stopped: energy beyond the vertex along arm 1
        # suppresses, so a straight line through the vertex drives it less than a corner.
        turn = int(rng.integers(2, 5)) * int(rng.choice([-1, 1]))
        ori2 = (ori + turn) % N_ORIENTATIONS
        d1, d2 = _direction(ori), _direction(ori2)
        comps.append((base + ori, *_offset(reach * d1[0], reach * d1[1]), 1.0))
        comps.append((base + ori2, *_offset(reach * d2[0], reach * d2[1]), 1.0))
        comps.append((base + ori, *_offset(-reach * d1[0], -reach * d1[1]), -0.6))
        comps.append((base + (ori + 4) % N_ORIENTATIONS, 0, 0, -0.3))
    elif kind == "curvature":
        # Three tangent segments of an arc, orientation turning by one or two steps.
        step = int(rng.integers(1, 3)) * int(rng.choice([-1, 1]))
        t = _direction(ori)
        normal = (-t[1], t[0])
        sag = 0.5 * reach * abs(step)
        sign = 1 if step > 0 else -1
        comps.append((base + ori, 0, 0, 1.0))
        comps.append((base + (ori + step) % N_ORIENTATIONS,
                      *_offset(reach * t[0] + sign * sag * normal[0],
                               reach * t[1] + sign * sag * normal[1]), 1.0))
        comps.append((base + (ori - step) % N_ORIENTATIONS,
                      *_offset(-reach * t[0] + sign * sag * normal[0],
                               -reach * t[1] + sign * sag * normal[1]), 1.0))
        comps.append((base + (ori + 4) % N_ORIENTATIONS, 0, 0, -0.5))
    elif kind == "texture":
        # Oriented texture at the fine scale spread over space, cross-orientation suppressed.
        base, wavelength = FINE0, FINE_WAVELENGTH
        for _ in range(3):
            comps.append((base + ori, int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)),
                          int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)), 1.0))
        comps.append((base + (ori + 4) % N_ORIENTATIONS, 0, 0, -0.6))
    elif kind == "polarity_edge":
        # A contrast-polarity edge with a bright or dark flank: sensitive to contrast sign.
        j = int(rng.integers(len(POLARITY_ORIENTATIONS)))
        ori = POLARITY_ORIENTATIONS[j]
        wavelength = 2 * FINE_WAVELENGTH
        sign = int(rng.integers(2))
        t = _direction(ori)
        normal = (-t[1], t[0])
        flank = 1 if sign == 0 else -1
        comps.append((POLARITY0 + 2 * j + sign, 0, 0, 1.0))
        comps.append((COARSE0 + ori, *_offset(reach * t[0], reach * t[1]), 0.7))
        comps.append((LUMINANCE0 + int(rng.integers(2)),
                      *_offset(flank * normal[0], flank * normal[1]), 0.6))
        comps.append((POLARITY0 + 2 * j + 1 - sign, 0, 0, -0.6))
    else:
        raise ValueError(f"unknown selectivity {kind!r}")
    return comps, ori, wavelength


def _draw_population(rng: np.random.Generator, n: int, m: int,
                     image_size: int) -> dict[str, np.ndarray]:
    """Random feature bank and neurons; data-dependent constants are left to calibration."""
    feat_type = np.arange(m) % len(SELECTIVITY_TYPES)
    channel = np.zeros((m, N_COMPONENTS), np.int64)
    dy = np.zeros((m, N_COMPONENTS), np.int64)
    dx = np.zeros((m, N_COMPONENTS), np.int64)
    weight = np.zeros((m, N_COMPONENTS), np.float32)
    orientation = np.zeros(m)
    wavelength = np.zeros(m)
    for j, kind in enumerate(feat_type):
        comps, ori, lam = _template(rng, SELECTIVITY_TYPES[kind])
        jitter = rng.uniform(0.8, 1.2, size=len(comps))
        for k, (c, r, col, w) in enumerate(comps):
            channel[j, k], dy[j, k], dx[j, k], weight[j, k] = c, r, col, w * jitter[k]
        orientation[j] = orientation_degrees()[ori]
        wavelength[j] = lam
    # Excitation sums to one so that feature thresholds are comparable.
    weight /= np.clip(weight, 0, None).sum(axis=1, keepdims=True)

    # Each neuron: one main feature, maybe a weaker second one and an inhibitory one. Sharing
    # a feature bank is what makes a core + readout model able to learn the population.
    mix = np.zeros((n, m))
    main = rng.permutation(np.arange(n) % m)  # every feature used before any repeats
    mix[np.arange(n), main] = 1.0
    for i in range(n):
        others = rng.permutation(np.delete(np.arange(m), main[i]))
        if rng.random() < 0.5:
            mix[i, others[0]] = rng.uniform(0.2, 0.6)
        if rng.random() < 0.5:
            mix[i, others[1]] = -rng.uniform(0.2, 0.5)
    size = float(image_size)
    target_rate = np.clip(np.exp(rng.normal(math.log(4.0), 0.35, n)), 2.0, 8.0)
    return {
        "format_version": np.asarray(FORMAT_VERSION, np.int64),
        "image_size": np.asarray(image_size, np.int64),
        "v1_kernels": _gabor_bank(),
        "feat_channel": channel, "feat_dy": dy, "feat_dx": dx, "feat_weight": weight,
        "feat_type": feat_type.astype(np.int64),
        "feat_orientation": orientation, "feat_wavelength": wavelength,
        "mix": mix,
        "rf_x": rng.uniform(0.35, 0.65, n) * size,
        "rf_y": rng.uniform(0.35, 0.65, n) * size,
        # At least one grid step: smaller RFs would alias on the stride-4 grid.
        "rf_sigma": np.maximum(rng.uniform(0.12, 0.2, n) * size, GRID_STRIDE),
        "pool_tau": rng.uniform(0.6, 1.5, n),
        "out_slope": rng.uniform(0.8, 1.5, n),
        "out_bias": rng.uniform(-0.5, 0.5, n),
        "target_rate": target_rate,
        # Peak rates 5-8x the mean (at most 40 spikes per bin): the best natural images come
        # close, optimised images can exceed them, nothing exceeds a plausible peak rate.
        "rate_max": np.minimum(target_rate * rng.uniform(5.0, 8.0, n), 40.0),
    }


def _calibrate(cls: type[GroundTruthV4], arrays: dict[str, np.ndarray], images: np.ndarray,
               rng: np.random.Generator) -> GroundTruthV4:
    """Fill in the data-dependent constants stage by stage on calibration images."""
    n, m = arrays["mix"].shape
    arrays.update({
        "norm_sigma": np.asarray(1.0), "channel_scale": np.ones(N_CHANNELS),
        "feat_threshold": np.zeros(m), "feat_scale": np.ones(m),
        "drive_mean": np.zeros(n), "drive_std": np.ones(n), "out_gain": np.ones(n),
    })
    x = torch.as_tensor(images, dtype=torch.float32)[:, None]
    chunks = x.split(CHUNK)
    with torch.no_grad():
        model = cls(arrays)
        # Normalisation constant: half the mean energy, so normalisation is strong for
        # high-contrast patches and weak for nearly blank ones.
        raw = [torch.cat(parts) for parts in zip(*(model.front_end(c) for c in chunks))]
        model.norm_sigma.fill_(0.5 * float(raw[0].mean()))
        channels = model.normalise(*raw)
        model.channel_scale.copy_(1.0 / channels.mean(dim=(0, 2, 3)).clamp_min(1e-6))
        channels = model.normalise(*raw)
        drive = torch.cat([model.feature_drive(c) for c in channels.split(CHUNK)], dim=2)
        # Threshold each feature at a random high quantile of its drive: sparse, AND-like.
        quantile = torch.as_tensor(rng.uniform(0.4, 0.7, m), dtype=torch.float32)
        ordered = drive.flatten(1).sort(dim=1).values
        rank = (quantile * (ordered.shape[1] - 1)).round().long()
        model.feat_threshold.copy_(ordered.gather(1, rank[:, None])[:, 0])
        maps = F.softplus(drive - model.feat_threshold.view(-1, 1, 1))
        model.feat_scale.copy_(1.0 / maps.std(dim=(1, 2)).clamp_min(1e-6))
        maps = model.feature_maps(drive)
        pooled = torch.cat([model.pooled(c) for c in maps.split(CHUNK, dim=2)])
        model.drive_mean.copy_(pooled.mean(0))
        model.drive_std.copy_(pooled.std(0).clamp_min(1e-6))
        target = torch.as_tensor(arrays["target_rate"], dtype=torch.float32)
        # The saturation makes the mean rate a monotone, concave function of the gain; these
        # multiplicative updates shrink the error ~5x each (1e-6 relative after 10).
        for _ in range(12):
            model.out_gain.mul_(target / model.rates(pooled).mean(0).clamp_min(1e-6))
    return cls.from_arrays(model.state_arrays())


# -------------------------------------------------------------------------------- datasets
def _tier_sizes(n: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(validation, test) image counts of a session of ``n`` images; no tier may be empty."""
    n_test = int(round(test_fraction * n))
    n_validation = int(round(validation_fraction * n))
    if n_test < 1 or n_validation < 1 or n - n_test - n_validation < 1:
        raise ValueError(f"{n} images per session leave an empty tier with validation_fraction="
                         f"{validation_fraction}, test_fraction={test_fraction}")
    return n_validation, n_test


def _split_tiers(n: int, validation_fraction: float, test_fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
    n_validation, n_test = _tier_sizes(n, validation_fraction, test_fraction)
    tiers = np.full(n, "train", dtype="<U10")
    order = rng.permutation(n)
    tiers[order[:n_test]] = "test"
    tiers[order[n_test:n_test + n_validation]] = "validation"
    return tiers


def make_twin(n_sessions: int, neurons_per_session: int, images_per_session: int,
              image_size: int, seed: int, validation_fraction: float = 0.1,
              test_fraction: float = 0.1, test_repeats: int = 10
              ) -> tuple[list[SessionData], GroundTruthV4]:
    """Generate the synthetic V4 dataset and the ground truth that produced it.

    One :class:`GroundTruthV4` holds all ``n_sessions * neurons_per_session`` neurons (a
    shared V1 front end); session ``s`` records columns ``s * neurons_per_session ...``.
    Each session has its own natural-image crops and a random split into tiers. Train and
    validation images get one Poisson trial of the true rate; test images get
    ``test_repeats``. ``trials`` is ``(N, test_repeats, neurons)``: test images fill every
    repeat, other images hold their single trial in repeat 0 and NaN elsewhere, so
    ``responses == nanmean(trials, axis=1)`` for every image.
    """
    if n_sessions < 1 or neurons_per_session < 1:
        raise ValueError("n_sessions and neurons_per_session must be >= 1")
    if images_per_session < 3:
        raise ValueError("images_per_session must be >= 3 (one per tier)")
    if test_repeats < 1:
        raise ValueError(f"test_repeats must be >= 1, got {test_repeats}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name, value in (("validation_fraction", validation_fraction),
                        ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("validation_fraction + test_fraction must be < 1")
    _tier_sizes(images_per_session, validation_fraction, test_fraction)  # fail before work

    model = GroundTruthV4.generate(n_sessions * neurons_per_session, image_size, seed)
    # One pool split into sessions: every session sees different crops.
    pool = natural_image_pool(n_sessions * images_per_session, image_size, _subseed(seed, 2))
    sources = ", ".join(source_image_names())
    sessions = []
    for s in range(n_sessions):
        rng = np.random.default_rng(_subseed(seed, 100 + s))
        images = pool[s * images_per_session:(s + 1) * images_per_session]
        index = np.arange(s * neurons_per_session, (s + 1) * neurons_per_session)
        with torch.no_grad():
            rate = ground_truth_response(model, images, index).double().numpy()
        tiers = _split_tiers(images_per_session, validation_fraction, test_fraction, rng)
        trials = np.full((images_per_session, test_repeats, neurons_per_session), np.nan,
                         np.float32)
        trials[:, 0] = rng.poisson(rate)
        test = tiers == "test"
        trials[test, 1:] = rng.poisson(rate[test][:, None], size=(int(test.sum()),
                                       test_repeats - 1, neurons_per_session))
        responses = np.nanmean(trials, axis=1).astype(np.float32)
        sid = f"twin{s}"
        meta = {
            "ground_truth_index": index.astype(np.int64),
            "rf_x": model.rf_x[index].numpy().astype(np.float64),
            "rf_y": model.rf_y[index].numpy().astype(np.float64),
            "rf_size": model.rf_sigma[index].numpy().astype(np.float64),
            "preferred_orientation": model.preferred_orientation[index].copy(),
            "preferred_wavelength": model.preferred_wavelength[index].copy(),
            "selectivity": model.selectivity[index].copy(),
            "main_feature": model.main_feature[index].copy(),
            "target_rate": model.target_rate[index].copy(),
        }
        sessions.append(SessionData(
            session_id=sid,
            images=np.ascontiguousarray(images),
            image_ids=np.arange(images_per_session, dtype=np.int64),
            responses=responses,
            tiers=tiers,
            neuron_ids=np.asarray([f"{sid}-n{i:03d}" for i in range(neurons_per_session)]),
            trials=trials,
            neuron_meta=meta,
            attrs={
                "units": "spikes per bin (Poisson)",
                "spike_counts": 1,
                "animal": "synthetic",
                "provenance": (f"encoders.twin.make_twin(seed={seed}, "
                               f"n_sessions={n_sessions}, neurons_per_session="
                               f"{neurons_per_session}, images_per_session="
                               f"{images_per_session}, image_size={image_size}, "
                               f"validation_fraction={validation_fraction}, test_fraction="
                               f"{test_fraction}, test_repeats={test_repeats}); "
                               f"{GROUND_TRUTH_FORMAT} v{FORMAT_VERSION}; crops of: {sources}"),
                "rf_units": "pixels (x from left, y from top; rf_size = Gaussian sigma)",
                "orientation_units": "degrees counter-clockwise from horizontal stripes",
                "trials_layout": "test: all repeats; train/validation: repeat 0 only",
            },
        ))
    return sessions, model


def write_twin(
    out: str | Path, n_sessions: int = 3, neurons_per_session: int = 40, images_per_session: int = 1500,
    image_size: int = 32, seed: int = 0, validation_fraction: float = 0.1, test_fraction: float = 0.1,
    test_repeats: int = 10,
) -> list[str]:
    """Generate the twin and write it, ground truth included, atomically to `out`.

    Args:
        out: output .h5 file.
        n_sessions: recording sessions.
        neurons_per_session: true neurons per session.
        images_per_session: images per session.
        image_size: side of the square grayscale images (pixels).
        seed: seed of everything random.
        validation_fraction: fraction of each session's images in the validation tier.
        test_fraction: fraction in the test tier (with repeats).
        test_repeats: trials per test image.
    """
    sessions, truth = make_twin(
        n_sessions=n_sessions, neurons_per_session=neurons_per_session, images_per_session=images_per_session,
        image_size=image_size, seed=seed, validation_fraction=validation_fraction, test_fraction=test_fraction,
        test_repeats=test_repeats,
    )
    return write_dataset(
        out, sessions,
        attrs={
            "title": "Synthetic V4 digital twin (ground-truth model neurons)",
            "source": "encoders prepare synthetic",
            "generator": f"sessions={n_sessions} neurons={neurons_per_session} images={images_per_session} "
                         f"size={image_size} seed={seed} test_repeats={test_repeats}",
        },
        ground_truth=truth.state_arrays(),
    )
