"""Callbacks: Lightning's hooks into training. Thin adapters after training: products, the test metrics table, readout figures, epoch times."""

from encoders.callbacks.epoch_timer import EpochTimer
from encoders.callbacks.metrics_table import MetricsTable
from encoders.callbacks.products import Products
from encoders.callbacks.readout_figures import ReadoutFigures

__all__ = ["EpochTimer", "MetricsTable", "Products", "ReadoutFigures"]
