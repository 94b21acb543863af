"""Image synthesis from trained models: energies, and the methods that minimise them (GA on pixels, EGG)."""

from encoders.synthesis.blur import gaussian_blur
from encoders.synthesis.energies import GroundTruthActivation, NeuronActivation, ResponseDistance
from encoders.synthesis.gradient_ascent import (
    GASettings,
    GradientAscentResult,
    default_norm,
    initial_images,
    optimize_images,
    optimize_in_batches,
)
from encoders.synthesis.methods import EGGSynthesis, GASynthesis, SynthesisResult, as_synthesis
from encoders.synthesis.targets import all_targets, parse_target, resolve_targets, top_k_targets

__all__ = [
    "EGGSynthesis",
    "GASynthesis",
    "SynthesisResult",
    "as_synthesis",
    "GASettings",
    "GradientAscentResult",
    "GroundTruthActivation",
    "NeuronActivation",
    "ResponseDistance",
    "all_targets",
    "default_norm",
    "gaussian_blur",
    "initial_images",
    "optimize_images",
    "optimize_in_batches",
    "parse_target",
    "resolve_targets",
    "top_k_targets",
]
