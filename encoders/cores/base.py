"""What every core is: stimuli (B, C_in, H, W) -> features (B, C, h, w), shared by all sessions' readouts.

Every core answers the same questions, so the Encoder, similarity diagnostics and figures ask the
core instead of branching on its type: its features (`forward`), every layer's (`layer_features`,
for model-brain similarity by layer), its penalty (`regularizer`), its output grid for an input
shape (`output_shape`, a dry run), and which of its arguments are out of range before anything is
built (`check_arguments`, a classmethod).
"""

from __future__ import annotations

from torch import Tensor, nn

from encoders.cores.output_shape import dry_run_shape


class Core(nn.Module):
    """Base class of cores; subclasses implement `forward`, `layer_features`, `regularizer` (and may check arguments)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) model-space images -> (B, C, h, w) features."""
        raise NotImplementedError

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """Every layer's output (the last one = `forward`'s), for similarity diagnostics by layer."""
        raise NotImplementedError

    def regularizer(self) -> Tensor:
        """The core's penalty added to the loss (a zero scalar when it has none)."""
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, h, w) of the output for a (C_in, H, W) input (a dry run: cheaper to keep right than a formula)."""
        return dry_run_shape(self, input_shape)

    @classmethod
    def check_arguments(cls, **arguments: object) -> None:
        """Raise ValueError naming an argument out of range, before the core is built (default: nothing to check)."""
