"""Train, validate, test and predict encoding models: `python train.py fit --config experiments/X.yaml` (= `encoders train ...`).

A LightningCLI over `EncodingModel` and `RecordedDataModule`; every experiment lives in a YAML file
in experiments/. After `fit`, the best checkpoint is tested, which writes the per-neuron metrics
table and runs the post-training callbacks configured in the YAML.

User errors (a bad data file, a misspelt model option, a broken checkpoint) print one line naming
what is wrong and where, and exit with status 2, without a traceback; jsonargparse does the same
for unknown or ill-typed keys. Ctrl-C prints one line and exits with 130; `--ckpt_path last` continues.
"""

from __future__ import annotations

import os
import sys

# Offline unless the user chose otherwise: with an API key and no mode, wandb may hang for minutes.
os.environ.setdefault("WANDB_MODE", "offline")

from encoders.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
