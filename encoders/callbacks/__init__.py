"""Callbacks: Lightning's hooks into training. Thin adapters after training: products, the test metrics table, readout figures."""

from encoders.callbacks.metrics_table import MetricsTable
from encoders.callbacks.products import Products
from encoders.callbacks.readout_figures import ReadoutFigures

__all__ = ["MetricsTable", "Products", "ReadoutFigures"]
