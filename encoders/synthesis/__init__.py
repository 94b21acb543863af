"""Image synthesis from trained models: energies, and the methods that minimise them (GA on pixels, EGG)."""

from encoders.synthesis.blur import gaussian_blur
from encoders.synthesis.energies import NeuronActivation, ResponseDistance
from encoders.synthesis.gradient_ascent import (
    GASettings,
    GradientAscentResult,
    default_norm,
    initial_images,
    optimize_images,
    optimize_in_batches,
)
from encoders.synthesis.egg import EGGSettings
from encoders.synthesis.method import Method, SynthesisResult
from encoders.synthesis.presets import (
    EGGPaper,
    EGGReconstructionPaper,
    EGGRebuttal,
    EGGSubmission,
    GAPaper,
    GARebuttal,
    GASubmission,
    GDReconstructionPaper,
    MENIPaper,
)
from encoders.synthesis.targets import all_targets, parse_target, resolve_targets, top_k_targets

__all__ = [
    "EGGPaper",
    "EGGReconstructionPaper",
    "EGGRebuttal",
    "EGGSettings",
    "EGGSubmission",
    "GAPaper",
    "GARebuttal",
    "GASubmission",
    "GDReconstructionPaper",
    "MENIPaper",
    "Method",
    "SynthesisResult",
    "GASettings",
    "GradientAscentResult",
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
