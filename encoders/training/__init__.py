"""Training: the LightningModule that trains an Encoder, the checkpoint callback, and the training command (train.py)."""

from encoders.training.checkpoint import ModelCheckpoint
from encoders.training.module import EncodingModel

__all__ = ["EncodingModel", "ModelCheckpoint"]
