"""The twin "records" a stimulus folder: its true neurons answer the images a rig would show.

This closes the loop in silico with the project's own commands: MEIs exported for the rig
(`encoders export`, PNGs named by image id) are shown to the true neurons of one of the twin's
sessions, each image `repeats` times with Poisson noise around the true rate, exactly as the twin
generated its own data (`encoders.twin.generation`). The result is written as a new session beside
the twin's own sessions (and its ground truth), so it trains (`model.init_from`) and scores like
any other session; its neuron ids are those of the recorded session, its image ids the files'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from encoders.datasets.image_files import ImageSource, read_images
from encoders.datasets.io import list_sessions, read_ground_truth, read_session, write_dataset
from encoders.datasets.schema import SessionData
from encoders.datasets.splits import SplitRule, assign_tiers
from encoders.errors import DatasetError, EncodersError
from encoders.twin import Twin
from encoders.twin.neurons import ground_truth_response

# every recorded image is repeated: the seeded fractions, not the repeats, decide the tiers
RECORDING_SPLIT = SplitRule(test_fraction=0.2, validation_fraction=0.1, repeats_to_test=False)


def record_stimuli(
    data: str, stimuli: str, out: str, sessions: list[str] | None = None, suffix: str = "_rec", repeats: int = 10,
    pattern: str = r"(\d+)", seed: int = 0, split: SplitRule = RECORDING_SPLIT,
) -> list[str]:
    """Record a folder of stimulus images with the twin's true neurons; write the twin plus the recordings.

    Args:
        data: the twin's data file (with ground truth).
        stimuli: folder (or zip) of 8-bit grey PNG/JPEG/TIFF images of the twin's image size; files that
            are not images (an export's manifest) are skipped.
        out: the data file to write: every session of `data`, its ground truth, and the recordings.
        sessions: the twin sessions whose neurons see the images (the same neurons, a later session
            each); default all.
        suffix: each new session's id is the recorded session's id plus this.
        repeats: presentations of every image (Poisson trials around the true rate).
        pattern: regular expression with one group, searched in each file name: the image id.
        seed: seed of the Poisson noise.
        split: tiers of the recorded images, the same for every session (default: seeded, 20% test and
            10% validation; every image is repeated, so `repeats_to_test` would put all of them in the
            test tier).
    Returns:
        the new sessions' ids.
    """
    if repeats < 1:
        raise EncodersError(f"--repeats: at least 1, got {repeats}")
    if seed < 0:
        raise EncodersError(f"--seed: must be non-negative, got {seed}")
    if not Path(stimuli).exists():
        raise EncodersError(f"{stimuli}: stimulus folder (or zip) not found")
    if not suffix:
        raise EncodersError("--suffix: must not be empty (the new sessions need ids of their own)")
    if Path(out).resolve() == Path(data).resolve():
        raise EncodersError(f"{out}: the output would overwrite the twin's data file; write a new file")
    problem = split.problem()
    if problem:
        raise EncodersError(f"--split.{problem[0]}: {problem[1]}")
    twin = Twin.from_file(data)
    if twin is None:
        raise DatasetError(data, "has no ground truth: only a synthetic twin can record stimuli", field="ground_truth")
    existing = list_sessions(data)
    chosen = list(sessions) if sessions else list(existing)
    unknown = [s for s in chosen if s not in existing]
    if unknown:
        raise DatasetError(data, f"no session(s) {unknown} to record from; sessions: {existing}", field="sessions")
    taken = [f"{s}{suffix}" for s in chosen if f"{s}{suffix}" in existing]
    if taken:
        raise DatasetError(data, f"already has session(s) {taken}; choose another --suffix", field="sessions")
    source = ImageSource(folder=stimuli) if Path(stimuli).is_dir() else ImageSource(zip=stimuli)
    source.pattern = pattern
    ids, images = read_images(source, field="stimuli")
    if images.ndim != 3 or images.shape[1:] != (twin.image_size, twin.image_size):
        raise DatasetError(stimuli, f"images of shape {images.shape[1:]}; the twin's neurons see grey "
                           f"{twin.image_size}x{twin.image_size} images", field="images")
    # one Poisson stream per session, drawn from its true rates; the split is the same for every session
    tiers, rule = assign_tiers(split, "recording", len(ids), np.full(len(ids), repeats))
    new = []
    for index, session in enumerate(chosen):
        recorded = read_session(data, session)
        with torch.no_grad():
            rates = ground_truth_response(twin.truth, images.astype(np.float32), twin.session_columns(session)).double().numpy()
        rng = np.random.default_rng([seed, index, repeats, len(ids)])
        trials = rng.poisson(rates[:, None, :], size=(len(ids), repeats, rates.shape[1])).astype(np.float32)
        new.append(SessionData(
            session_id=f"{session}{suffix}", images=images, image_ids=ids.astype(np.int64), responses=trials.mean(1),
            tiers=tiers, neuron_ids=recorded.neuron_ids, trials=trials, neuron_meta=recorded.neuron_meta,
            attrs={"units": "spikes per bin (Poisson)", "spike_counts": 1, "animal": "synthetic", "split": rule,
                   "provenance": f"encoders twin record: {Path(stimuli).name} shown {repeats}x to the true neurons of "
                                 f"{session} (seed {seed})"},
        ))
    write_dataset(out, [*(read_session(data, s) for s in existing), *new],
                  attrs={"title": "Synthetic V4 digital twin with recorded stimulus sets", "source": f"{data} + {stimuli}"},
                  ground_truth=read_ground_truth(data))
    return [session.session_id for session in new]
