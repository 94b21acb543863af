"""Train, validate, test and predict encoding models: `python train.py fit --config experiments/X.yaml` (= `encoders train ...`).

A LightningCLI over `EncodingModel` and `RecordedDataModule`; every experiment lives in a YAML file
in experiments/. After `fit`, the best checkpoint is tested, which writes the per-neuron metrics
table and runs the post-training callbacks configured in the YAML.

User errors (a bad data file, a misspelt model option, a broken checkpoint) print one line naming
what is wrong and where, and exit with status 2, without a traceback; jsonargparse does the same
for unknown or ill-typed keys. Ctrl-C (exit 130) and SIGTERM (exit 143) print one line with the
command that continues (`--ckpt_path last` added), from the first import on.
"""

from __future__ import annotations

import os
import sys

# Offline unless the user chose otherwise: with an API key and no mode, wandb may hang for minutes.
os.environ.setdefault("WANDB_MODE", "offline")

from encoders.interrupts import Interrupts  # noqa: E402

with Interrupts() as starting:  # importing torch and Lightning takes seconds: a signal then stops cleanly too
    try:
        from encoders.training.cli import main
    except KeyboardInterrupt:
        print(f"train: stopped by {starting.name} while starting; nothing was written", file=sys.stderr)
        sys.exit(starting.status)

if __name__ == "__main__":
    sys.exit(main())
