"""Train, validate, test and predict encoding models: `python train.py fit --config experiments/X.yaml`.

A LightningCLI over `EncodingModel` and `RecordedDataModule`; every experiment lives in a YAML file
in experiments/. After `fit`, the best checkpoint is tested, which writes the per-neuron metrics
table and runs the post-training callbacks configured in the YAML.
"""

from __future__ import annotations

import os

# Offline unless the user chose otherwise: with an API key and no mode, wandb may hang for minutes.
os.environ.setdefault("WANDB_MODE", "offline")

from pytorch_lightning.cli import LightningCLI  # noqa: E402

from encoders.datasets.datamodule import RecordedDataModule  # noqa: E402
from encoders.model import EncodingModel  # noqa: E402


class EncodersCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit", True):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")


def main(args: list[str] | None = None) -> EncodersCLI:
    return EncodersCLI(
        EncodingModel,
        RecordedDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
