"""Callbacks that run after training or testing and write labelled products to the run folder."""

from encoders.callbacks.checkpoint import ModelCheckpoint
from encoders.callbacks.metrics_table import MetricsTable
from encoders.callbacks.readout_figures import ReadoutFigures

__all__ = ["MetricsTable", "ReadoutFigures", "ModelCheckpoint"]
