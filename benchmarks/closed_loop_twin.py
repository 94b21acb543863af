"""The closed loop on the twin, end to end with the project's own commands (README, "Closing the loop").

    python benchmarks/closed_loop_twin.py            # about 15 minutes on 2 CPU cores

Round 0: train on the twin's natural images (experiments/loop_twin.yaml); MEIs of the 12 best-predicted
neurons by GA (4 seeds) and EGG (2 seeds, the natural32 prior); `encoders export` them with each target's
3 top natural images and 24 random natural images; `encoders twin record` shows the folder to every
session's true neurons (10 Poisson repeats); the experiment's answer is each target's response to its
MEIs against its controls. Round 1: fine-tune the model on the natural images plus the recordings
(experiments/loop_twin_round1.yaml, `model.init_from` round 0). Does the model now predict the true
neurons' responses to synthesised images better? Measured on MEIs made by round 0 with other seeds,
which were never shown to the twin (held out), and on the recorded test-tier images.

Every step is printed as the command a user would type; its numbers land in <out>/loop.json and <out>/loop.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encoders.checkpoints import load_encoder  # noqa: E402
from encoders.datasets.io import read_session  # noqa: E402
from encoders.metrics import correlation  # noqa: E402
from encoders.outputs import write_json, write_text  # noqa: E402
from encoders.twin import Twin  # noqa: E402
from encoders.twin.scoring import true_rates  # noqa: E402

GA = "{seeds: [0, 1, 2, 3], steps: 100, lr: 0.05, blur_sigma: 1.0}"
GA_HELD_OUT = "{seeds: [4, 5, 6, 7], steps: 100, lr: 0.05, blur_sigma: 1.0}"
EGG = ("{class_path: encoders.synthesis.EGGSettings, init_args: {prior: data/priors/natural32, seeds: %s, num_steps: 50, "
       "energy_scale: 0.0625, contrast: 0.25}}")


def run(*command: str, log: list) -> float:
    """Run one command as a user would (printed first); its wall seconds."""
    print("$", " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(list(command), cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    log.append({"command": " ".join(command), "seconds": round(seconds, 1)})
    return seconds


def product_images(path: Path) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Every image of an MEI product (model space) and the (session, neuron) it was made for."""
    with xr.open_dataset(path, engine="h5netcdf") as d:
        images = torch.as_tensor(d["image"].values)  # (method, neuron, seed, C, H, W)
        targets = list(zip(d["session"].values.tolist(), d["neuron_id"].values.tolist()))
    n_seeds = images.shape[2]
    return images.flatten(0, 2), [t for t in targets for _ in range(n_seeds)]


def prediction_of_truth(model, twin: Twin, images: torch.Tensor, sessions: dict[str, str]) -> dict[str, np.ndarray]:
    """Per readout: each of the session's neurons' corr(predicted, true rate) across `images`."""
    columns_pixels = true_rates(twin.truth, twin.geometry(model), model.image_transform.to_pixels(images))
    out = {}
    with torch.no_grad():
        for label, (readout, recorded) in sessions.items():
            predicted = torch.cat([model(x, readout) for x in images.split(256)])
            truth = columns_pixels[:, twin.session_columns(recorded)]
            out[label] = correlation(predicted, truth).numpy()
    return out


def config_in(name: str, out: Path, run: str | None = None) -> str:
    """experiments/<name> with its run folders moved from runs/loop to `out` (and from round1 to `run`), written
    into `out` when that changes anything; the shipped YAML is otherwise unchanged."""
    text = (ROOT / "experiments" / name).read_text()
    moved = text.replace("runs/loop/round1", f"runs/loop/{run}") if run else text
    moved = moved.replace("runs/loop", str(out))
    if moved == text:
        return f"experiments/{name}"
    (ROOT / out).mkdir(parents=True, exist_ok=True)
    path = ROOT / out / f"{run or Path(name).stem}.yaml"
    path.write_text(moved)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic_v4.h5"))
    parser.add_argument("--out", type=Path, default=Path("runs/loop"))
    parser.add_argument("--top_k", type=int, default=12)
    args = parser.parse_args(argv)
    out, data, py, enc, log = args.out, args.data, sys.executable, str(Path(sys.executable).with_name("encoders")), []
    if not (ROOT / data).is_file():
        run(enc, "prepare", "synthetic", str(data), "--config", "experiments/twin.yaml", log=log)
    r0 = out / "round0" / "checkpoints" / "last.ckpt"
    if not (ROOT / r0).is_file():
        run(py, "train.py", "fit", "--config", config_in("loop_twin.yaml", out), "--data.path", str(data), log=log)
    products, held_out = out / "products", out / "held_out"
    mei = [enc, "mei", str(r0), "--data", str(data), "--top_k", str(args.top_k)]
    run(*mei, "--out", str(products), "--method", GA, log=log)
    run(*mei, "--out", str(products), "--method", EGG % "[0, 1]", log=log)
    run(*mei, "--out", str(held_out), "--method", GA_HELD_OUT, log=log)
    run(*mei, "--out", str(held_out), "--method", EGG % "[2, 3]", log=log)
    stimuli, recorded = out / "stimuli", out / "recorded.h5"
    if not (ROOT / stimuli / "manifest.csv").is_file():
        run(enc, "export", str(r0), "--data", str(data), "--products", f"[{products / 'mei_ga.nc'}, {products / 'mei_egg.nc'}]",
            "--out", str(stimuli), "--top_natural", "3", "--random_natural", "24", "--seeds", "all", log=log)
    if not (ROOT / recorded).is_file():
        run(enc, "twin", "record", str(data), str(stimuli), str(recorded), "--repeats", "10", log=log)
    r1 = out / "round1" / "checkpoints" / "last.ckpt"
    if not (ROOT / r1).is_file():
        run(py, "train.py", "fit", "--config", config_in("loop_twin_round1.yaml", out), "--model.init_from", str(r0),
            "--data.path", str(recorded), log=log)
    # the control: the same fine-tuning on the natural images alone (is it the recordings, or 10 more epochs?)
    control = out / "round1_natural_only" / "checkpoints" / "last.ckpt"
    if not (ROOT / control).is_file():
        run(py, "train.py", "fit", "--config", config_in("loop_twin_round1.yaml", out, "round1_natural_only"),
            "--model.init_from", str(r0), "--data.path", str(data), log=log)

    # ---- the experiment's answer: each target's recorded and true response to its MEIs and controls
    manifest = pd.read_csv(ROOT / stimuli / "manifest.csv")
    twin = Twin.from_file(ROOT / recorded)
    rows = []
    for _, row in manifest.iterrows():
        targets = str(row["neuron"]).split(";") if isinstance(row["neuron"], str) else []
        rows.append({"image_id": int(row["image_id"]), "session": row["session"], "origin": row["origin"] if row["origin"] != "mei"
                     else f"mei_{row['method']}", "targets": targets, "best": row.get("best_seed", 0) == 1})
    answer = {}
    per_session = {}
    for session in manifest["session"].unique():
        rec = read_session(ROOT / recorded, f"{session}_rec")
        index = {int(i): k for k, i in enumerate(rec.image_ids)}
        with torch.no_grad():
            truth = true_rates(twin.truth, twin.geometry(load_encoder(ROOT / r0)),
                               load_encoder(ROOT / r0).image_transform.geometry(rec.images)).numpy()[:, twin.session_columns(session)]
        per_session[session] = (rec, index, truth, {n: j for j, n in enumerate(rec.neuron_ids.tolist())})
    for kind in ("mei_ga", "mei_egg", "natural_top", "natural_random"):
        recorded_values, true_values = [], []
        for target_session, neuron in sorted({(r["session"], t) for r in rows for t in r["targets"]}):
            rec, index, truth, neurons = per_session[target_session]
            j = neurons[neuron]
            chosen = [index[r["image_id"]] for r in rows if r["session"] == target_session and r["origin"] == kind
                      and (kind == "natural_random" or neuron in r["targets"]) and (not kind.startswith("mei") or r["best"])]
            if chosen:
                recorded_values.append(rec.responses[chosen, j].mean())
                true_values.append(truth[chosen, j].mean())
        answer[kind] = {"recorded": float(np.mean(recorded_values)), "true": float(np.mean(true_values)), "neurons": len(true_values),
                        "true_per_target": [float(v) for v in true_values]}

    # ---- did the model learn the synthesised images? held-out MEIs (never recorded) and the recorded test tier
    models = {"round 0": load_encoder(ROOT / r0), "round 1": load_encoder(ROOT / r1), "control": load_encoder(ROOT / control)}
    held = [product_images(ROOT / held_out / name) for name in ("mei_ga.nc", "mei_egg.nc")]
    held_images = torch.cat([h[0] for h in held])
    held_sessions = sorted({s for h in held for s, _ in h[1]})
    fit = {}
    for name, model in models.items():
        readouts = {s: (s, s) for s in held_sessions}
        if name == "round 1":
            readouts.update({f"{s}_rec": (f"{s}_rec", s) for s in held_sessions})
        on_held = prediction_of_truth(model, twin, held_images, readouts)
        test = {}
        for s in held_sessions:
            rec = per_session[s][0]
            x = model.image_transform(rec.images[rec.tiers == "test"])
            test.update(prediction_of_truth(model, twin, x, {k: v for k, v in readouts.items() if v[1] == s}))
        fit[name] = {"held_out_meis": on_held, "recorded_test_tier": test}
    from scipy.stats import wilcoxon

    def mean(values: dict, keys: list[str]) -> float:
        return float(np.nanmean(np.concatenate([values[k] for k in keys])))

    rows_fit, table = {}, []
    for where in ("held_out_meis", "recorded_test_tier"):
        before = np.concatenate([fit["round 0"][where][s] for s in held_sessions])
        after = np.concatenate([fit["round 1"][where][s] for s in held_sessions])
        natural = np.concatenate([fit["control"][where][s] for s in held_sessions])
        rows_fit[where] = {"round0": mean(fit["round 0"][where], held_sessions), "round1": mean(fit["round 1"][where], held_sessions),
                           "control": mean(fit["control"][where], held_sessions),
                           "round1_recorded_readout": mean(fit["round 1"][where], [f"{s}_rec" for s in held_sessions]),
                           "better": float(np.mean(after > before)), "p": float(wilcoxon(after, before).pvalue),
                           "better_than_control": float(np.mean(after > natural)), "p_control": float(wilcoxon(after, natural).pvalue),
                           "neurons": int(len(before))}
        table.append((where, rows_fit[where]))
    summary = {"answer": answer, "prediction_of_truth": rows_fit, "commands": log, "held_out_images": int(len(held_images)),
               "images_exported": int(len(manifest)), "targets": int(len({(r["session"], t) for r in rows for t in r["targets"]}))}
    write_json(summary, ROOT / out / "loop.json")
    lines = ["| response of each target neuron (spikes/bin, mean over targets) | recorded (10 trials) | true rate |", "|---|---|---|"]
    names = {"mei_ga": "its GA MEI (best seed)", "mei_egg": "its EGG MEI (best seed)", "natural_top": "its 3 top natural images",
             "natural_random": "random natural images"}
    lines += [f"| {names[k]} | {v['recorded']:.2f} | {v['true']:.2f} |" for k, v in answer.items()]
    for kind in ("mei_ga", "mei_egg"):  # paired over the same targets (the order of `targets` is the same for every kind)
        mei, top = np.array(answer[kind]["true_per_target"]), np.array(answer["natural_top"]["true_per_target"])
        lines.append(f"| {names[kind]} − its top natural images, true rate, paired over {len(mei)} targets | | "
                     f"{np.mean(mei - top):+.2f} (higher for {np.mean(mei > top):.0%}, Wilcoxon p {wilcoxon(mei, top).pvalue:.2g}) |")
    lines += ["", "| model → truth correlation on synthesised images (per neuron, mean) | round 0 | round 1 | round 1 vs 0: "
              "better for, p | control: natural images only | round 1 vs control: better for, p | round 1, the recording's own readout |",
              "|---|---|---|---|---|---|---|"]
    for where, v in table:
        lines.append(f"| {where.replace('_', ' ')} ({v['neurons']} neurons) | {v['round0']:.3f} | {v['round1']:.3f} | "
                     f"{v['better']:.0%}, {v['p']:.2g} | {v['control']:.3f} | {v['better_than_control']:.0%}, {v['p_control']:.2g} | "
                     f"{v['round1_recorded_readout']:.3f} |")
    text = "\n".join(lines) + "\n"
    write_text(text, ROOT / out / "loop.md")
    print(text)


if __name__ == "__main__":
    main()
