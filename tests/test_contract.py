"""The network definition a model carries, and what the contract refuses."""

from __future__ import annotations

import pytest
import torch
from monai.utils import instantiate

from monai_emotion.contract import save_contract
from monai_emotion.errors import ConfigError
from monai_emotion.networks import EmotionCNN3D, build_network


@pytest.mark.parametrize("name, kwargs", [
    ("EmotionCNN3D", {"num_classes": 5, "spatial_shape": [9, 11, 6], "head": "flatten", "channels": [4, 8, 8]}),
    ("EmotionCNN3D", {"num_classes": 3, "spatial_shape": [9, 11, 6], "head": "gap", "channels": [4, 8, 8]}),
    ("monai.networks.nets.DenseNet121", {"spatial_dims": 3, "out_channels": 4}),
])
def test_a_network_rebuilt_from_its_definition_takes_the_same_weights(name: str, kwargs: dict) -> None:
    net = build_network(name, in_channels=1, **kwargs)
    definition = dict(net.definition)
    target = definition.pop("_target_")
    rebuilt = instantiate(target, "default", **definition)
    rebuilt.load_state_dict(net.state_dict())  # raises on any mismatch of names or shapes
    net.eval(), rebuilt.eval()
    x = torch.randn(1, 1, 32, 32, 32) if "DenseNet" in name else torch.randn(2, 1, 9, 11, 6)
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))


def test_a_network_without_a_definition_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="carries no definition"):
        save_contract(tmp_path, {"train": [], "validate": [], "test": []}, EmotionCNN3D(spatial_shape=None, head="gap"))
