"""Callbacks that run after training or testing and write labelled products to the run folder."""

from encoders.callbacks.checkpoint import ModelCheckpoint
from encoders.callbacks.egg import EGGCallback
from encoders.callbacks.mei import MEICallback
from encoders.callbacks.metrics_table import MetricsTable
from encoders.callbacks.readout_figures import ReadoutFigures
from encoders.callbacks.reconstruction import ReconstructionCallback
from encoders.callbacks.similarity import SimilarityCallback

__all__ = ["EGGCallback", "MEICallback", "MetricsTable", "ModelCheckpoint", "ReadoutFigures", "ReconstructionCallback", "SimilarityCallback"]
