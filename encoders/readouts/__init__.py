"""Readouts: per-session maps from core features (B, C, h, w) to neuron responses (B, n_neurons)."""

from encoders.readouts.attention import AttentionReadout
from encoders.readouts.base import Readout
from encoders.readouts.common import initial_bias
from encoders.readouts.gaussian import GaussianReadout
from encoders.readouts.positional import sinusoidal_2d

__all__ = ["AttentionReadout", "Readout", "GaussianReadout", "initial_bias", "sinusoidal_2d"]
