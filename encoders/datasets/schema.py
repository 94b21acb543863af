"""The on-disk format of a recorded dataset, in one place.

A dataset is one HDF5 file (netCDF4 flavour, so xarray opens each session lazily) holding any
number of recording sessions::

    /                       attrs: schema_version, title, source, created_by, created
    /sessions/<session>/    one group per session (netCDF4 group)
        images      (image, y, x) or (image, channel, y, x)   uint8, float16 or float32, pixel space
        image_id    (image,)            int64, unique within the session
        tier        (image,)            str: "train" | "validation" | "test"
        responses   (image, neuron)     float16/32/64, averaged over repeats (finite in float32)
        trials      (image, repeat, neuron)  float32/64, optional, NaN where a repeat is missing
        neuron_id   (neuron,)           str, unique within the session
        <meta>      (neuron,)           optional per-neuron metadata (any name, any dtype)
        <meta>      (image,)            optional per-image metadata (any name, any dtype; not a name of the above)
        attrs: units, spike_counts (0/1: non-negative counts declared), provenance, animal, ...
    /ground_truth/          optional: arrays that rebuild the true neurons of a synthetic twin

data/README.md documents the same schema for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = "1.0"
SUPPORTED_SCHEMA_VERSIONS = ("1.0",)
TIERS = ("train", "validation", "test")
SESSIONS_GROUP = "sessions"
GROUND_TRUTH_GROUP = "ground_truth"

# (variable, dims) of the fixed per-session fields; images may also be (image, channel, y, x).
REQUIRED_FIELDS = ("images", "image_id", "tier", "responses", "neuron_id")
OPTIONAL_FIELDS = ("trials",)
DIMENSIONS = ("image", "neuron", "repeat", "channel", "y", "x")


@dataclass
class SessionData:
    """One recording session held in memory, as written to / read from the format."""

    session_id: str
    images: np.ndarray  # (N, H, W) or (N, C, H, W), uint8, float16 or float32, pixel space
    image_ids: np.ndarray  # (N,) int64, unique
    responses: np.ndarray  # (N, neurons) float16/32/64, averaged over repeats
    tiers: np.ndarray  # (N,) str, each in TIERS
    neuron_ids: np.ndarray  # (neurons,) str, unique
    trials: np.ndarray | None = None  # (N, repeats, neurons) float32/64, NaN = missing repeat
    neuron_meta: dict[str, np.ndarray] = field(default_factory=dict)  # each (neurons,)
    attrs: dict[str, str | int | float] = field(default_factory=dict)
    image_meta: dict[str, np.ndarray] = field(default_factory=dict)  # each (N,), optional per-image metadata

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[1])
