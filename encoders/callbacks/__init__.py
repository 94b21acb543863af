"""Callbacks that run after training or testing and write labelled products to the run folder."""

from encoders.callbacks.checkpoint import ModelCheckpoint
from encoders.callbacks.metrics_table import MetricsTable

__all__ = ["MetricsTable", "ModelCheckpoint"]
