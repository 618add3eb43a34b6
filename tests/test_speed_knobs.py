"""The bundle's GPU speed knobs (monai_emotion/engine/speed.py) on CPU: each trains, none changes a result.

``amp`` with ``amp_dtype`` bfloat16 and ``channels_last`` train one iteration on the tiny
bundle world and give exactly the weights of the knobs-off step (on a CPU MONAI's AMP
autocasts CUDA ops only and channels_last is not applied). ``compile`` is only parsed: a
torch.compile of the network costs far more than this test's budget on a CPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from bundle_runs import tiny_training, train_parser

from monai_emotion.engine.speed import amp_kwargs, place_network
from monai_emotion.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    return tiny_training(tmp_path_factory.mktemp("speed_knobs"))


def _trainer(tiny: dict, monkeypatch: pytest.MonkeyPatch, **knobs: object):
    # one iteration, no validation or logging handlers: the step itself is what is compared
    parser = train_parser(tiny, monkeypatch, epochs=1, device_frames=False, **{
        "train#trainer#epoch_length": 1, "train#handlers": [], **knobs})
    torch.manual_seed(0)
    return parser.get_parsed_content("train#trainer")


def _step(tiny: dict, monkeypatch: pytest.MonkeyPatch, **knobs: object) -> tuple[dict, dict]:
    """The network's weights before and after one training iteration under ``knobs``."""
    trainer = _trainer(tiny, monkeypatch, **knobs)
    before = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMP on a CPU: torch warns that CUDA autocast is off
        trainer.run()
    assert trainer.state.iteration == 1 and torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    return before, {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def test_knobs_train_and_leave_cpu_results_unchanged(tiny, monkeypatch):
    untrained, reference = _step(tiny, monkeypatch)
    assert any(not torch.equal(reference[k], untrained[k]) for k in reference)  # the step trained
    # every knob at once (each parse prepares the experiment: one run keeps the test short)
    _, weights = _step(tiny, monkeypatch, amp=True, amp_dtype="bfloat16", channels_last=True)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_compile_key_parses(tiny, monkeypatch):
    trainer = _trainer(tiny, monkeypatch, compile=True)
    assert trainer.compile is True  # MONAI wrapped the network in torch.compile (compiled on first use)


def test_helpers():
    assert amp_kwargs("bfloat16", "cpu") == {"dtype": torch.bfloat16}
    assert amp_kwargs("auto", "cpu") == {"dtype": torch.float16}  # no CUDA: float16, what MONAI used before
    with pytest.raises(ConfigError, match="amp_dtype"):
        amp_kwargs("int8", "cpu")
    net = torch.nn.Conv3d(1, 2, 3)
    assert place_network(net, "cpu", channels_last=True).weight.is_contiguous()  # not applied off CUDA
    with pytest.raises(ConfigError, match="channels_last"):
        place_network(net, "cpu", channels_last="yes")
