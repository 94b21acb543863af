"""A non-finite loss stops training with one message naming the session and the step."""

import pytest
import torch

from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.training import EncodingModel


def test_non_finite_loss_names_session_and_step():
    info = {"sessions": {"s7": {"neuron_ids": ["a", "b"], "mean_response": [1.0, 2.0], "n_train": 10}},
            "input_shape": [1, 12, 12], "transform": ImageTransform().state()}
    model = EncodingModel(core={"type": "stacked", "hidden_channels": 4, "layers": 1, "input_kernel": 5},
                          readout={"type": "gaussian"}, data_info=info)
    batch = {"session": "s7", "images": torch.full((3, 1, 12, 12), float("nan")), "responses": torch.ones(3, 2)}
    with pytest.raises(EncodersError, match=r"loss is nan at step 0 \(session 's7', batch 5\)"):
        model.training_step(batch, 5)
