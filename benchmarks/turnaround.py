"""Closed-loop turnaround: from "today's session file exists" to "its stimulus folder is written".

    python benchmarks/turnaround.py --core runs/new_session/without_210305/seed0/checkpoints/last.ckpt --session 210305

The steps a lab runs during the recording day, timed as the commands a user types (process start to end,
imports included), one after the other:
1. fit the session's readout on the trained core (experiments/cowley_new_session.yaml, readout only);
2. GA MEIs of every neuron of the session (`encoders mei`, 4 seeds, batched over neurons);
3. `encoders export` them with 2 top natural images per neuron and 20 random natural images.
Prints a table of seconds per step, the total, and the load. `--device cuda` runs steps 2 and 3 on a GPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encoders.datasets.io import read_arrays  # noqa: E402
from encoders.outputs import write_text  # noqa: E402


def timed(command: list[str]) -> float:
    print("$", " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", type=Path, required=True, help="a checkpoint trained without --session")
    parser.add_argument("--session", required=True, help="today's session (a session of --data the core never saw)")
    parser.add_argument("--data", type=Path, default=Path("data/cowley2023_v4.h5"))
    parser.add_argument("--out", type=Path, default=Path("runs/turnaround"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out, py, enc = args.out, sys.executable, str(Path(sys.executable).with_name("encoders"))
    os.environ.update(OMP_NUM_THREADS=str(args.threads), WANDB_MODE="offline")
    neurons = [f"{args.session}/{n}" for n in read_arrays(args.data, args.session, ["neuron_id"])["neuron_id"]]
    (ROOT / out).mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "experiments" / "cowley_new_session.yaml").read_text())
    config["trainer"]["default_root_dir"] = str(out / "readout")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(out / "readout" / "checkpoints")
    (ROOT / out / "readout.yaml").write_text(yaml.safe_dump(config))
    (ROOT / out / "meis.yaml").write_text(yaml.safe_dump({"neurons": neurons, "method": {"seeds": [0, 1, 2, 3], "steps": 100}}))
    checkpoint = out / "readout" / "checkpoints" / "last.ckpt"
    seconds = {
        "readout fit": timed([py, "train.py", "fit", "--config", str(out / "readout.yaml"), "--model.init_from", str(args.core),
                              "--data.path", str(args.data), "--data.sessions", f"[{args.session}]"]),
        f"GA MEIs of all {len(neurons)} neurons (4 seeds)": timed(
            [enc, "mei", str(checkpoint), "--config", str(out / "meis.yaml"), "--out", str(out / "products"), "--device", args.device]),
        "export (+2 top, 20 random natural)": timed(
            [enc, "export", str(checkpoint), "--data", str(args.data), "--products", str(out / "products" / "mei_ga.nc"),
             "--out", str(out / "stimuli"), "--top_natural", "2", "--random_natural", "20", "--device", args.device]),
    }
    total = sum(seconds.values())
    load = os.getloadavg()[0]
    lines = [f"| step ({args.session}, {len(neurons)} neurons, {args.device}, {args.threads} threads, load {load:.1f}) | seconds |",
             "|---|---|", *(f"| {k} | {v:.0f} |" for k, v in seconds.items()), f"| **total** | **{total:.0f}** |"]
    text = "\n".join(lines) + "\n"
    write_text(text, ROOT / out / "turnaround.md")
    print(text)


if __name__ == "__main__":
    main()
