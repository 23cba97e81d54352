"""cuDNN's TF32 switch around SIFT's scale space (`device.exact_fp32_convolutions`): set and given
back exactly. The switch is a process-wide flag that a CPU-only torch also holds, so this runs
everywhere; what it changes on a GPU is covered by the CUDA-vs-CPU SIFT tests."""

from __future__ import annotations

import threading

import pytest
import torch

from featmatch_core.device import _restore_tf32_settings, _tf32_settings, exact_fp32_convolutions

cudnn = torch.backends.cudnn
PER_OP = hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision")


@pytest.fixture
def tf32_state():
    saved = _tf32_settings()
    whole = cudnn.fp32_precision if PER_OP else None  # cuDNN as a whole, which "none" inherits
    yield
    if whole is not None:
        cudnn.fp32_precision = whole
    _restore_tf32_settings(saved)


def test_off_inside_the_block_and_back_after_it(tf32_state):
    cudnn.allow_tf32 = True
    with exact_fp32_convolutions(torch.device("cuda")):
        assert cudnn.allow_tf32 is False
        if PER_OP:
            assert cudnn.conv.fp32_precision != "tf32"
    assert cudnn.allow_tf32 is True
    with pytest.raises(ValueError, match="inside"), exact_fp32_convolutions(torch.device("cuda", 0)):
        raise ValueError("inside")
    assert cudnn.allow_tf32 is True  # given back after an error too


def test_a_cpu_device_leaves_the_switch_alone(tf32_state):
    cudnn.allow_tf32 = True
    with exact_fp32_convolutions(torch.device("cpu")):
        assert cudnn.allow_tf32 is True


@pytest.mark.skipif(not PER_OP, reason="torch < 2.9 has no per-operator TF32 settings")
@pytest.mark.parametrize("conv_rnn", [("tf32", "ieee"), ("ieee", "ieee"), ("none", "tf32")])
def test_per_operator_settings_come_back_as_they_were(tf32_state, conv_rnn):
    """Set through torch's newer per-operator API, conv and RNN may differ (the legacy switch
    then may not even be read): both come back unchanged, and a legacy switch that could be read
    before reads the same after."""
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = conv_rnn
    legacy_before, _ = _tf32_settings()
    with exact_fp32_convolutions(torch.device("cuda")):
        assert cudnn.conv.fp32_precision != "tf32"
    legacy_after, per_op_after = _tf32_settings()
    assert per_op_after == conv_rnn
    assert legacy_before is None or legacy_after == legacy_before


@pytest.mark.skipif(not PER_OP, reason="torch < 2.9 has no per-operator TF32 settings")
def test_tf32_set_for_cudnn_as_a_whole_is_off_in_the_block_too(tf32_state):
    """The legacy switch leaves conv at "none", which inherits a TF32 set for cuDNN as a whole:
    the block sets full fp32 for conv and RNN explicitly, and gives their settings back."""
    cudnn.fp32_precision = "tf32"
    before = (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    with exact_fp32_convolutions(torch.device("cuda")):
        assert (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("ieee", "ieee")
        with exact_fp32_convolutions(torch.device("cuda")):  # nested in one thread: no deadlock
            assert cudnn.conv.fp32_precision == "ieee"
        assert cudnn.conv.fp32_precision == "ieee"
    assert (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == before


def test_threads_take_turns_and_the_switch_ends_as_it_began(tf32_state):
    cudnn.allow_tf32 = True
    seen, errors = [], []

    def work() -> None:
        try:
            for _ in range(200):
                with exact_fp32_convolutions(torch.device("cuda")):
                    seen.append(cudnn.allow_tf32)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(seen) == 800 and not any(seen)
    assert cudnn.allow_tf32 is True
