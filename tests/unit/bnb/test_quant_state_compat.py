"""QuantState behaves as bitsandbytes' QuantState: ==, settable nested, deletable state2, the FSDP proxy."""

import copy
import pickle

import pytest
import torch

from edgequant.bnb import QuantState, quantize_4bit, quantize_blockwise
from edgequant.bnb.quant_state import QuantStateError


def _state(nested=True, quant_type="nf4"):
    torch.manual_seed(0)
    return quantize_4bit(torch.randn(64, 128), quant_type=quant_type, compress_statistics=nested)[1]


@pytest.mark.parametrize("nested", [False, True])
def test_eq_after_pickle_and_deepcopy(nested):
    st = _state(nested)
    for other in (pickle.loads(pickle.dumps(st)), copy.deepcopy(st)):
        assert other is not st
        assert other == st
    assert st != "not a state"


def test_eq_tolerance_and_differences():
    st = _state(False)
    near = copy.deepcopy(st)
    near.absmax = near.absmax + 5e-7  # within bnb's atol 1e-6
    assert near == st
    far = copy.deepcopy(st)
    far.absmax = far.absmax * 1.01
    assert far != st
    other_type = copy.deepcopy(st)
    other_type.quant_type = "fp4"
    assert other_type != st
    assert _state(True) != _state(False)  # one nested, one not


def test_nested_settable_and_state2_deletable():
    st = _state(True)
    assert st.nested is True
    st.nested = False  # what bnb's _convert_weight_packed_for_cpu does
    del st.state2
    assert st.nested is False
    assert not hasattr(st, "state2")
    assert [k for k in st.as_dict() if k.startswith("nested")] == []
    assert st[4] is None


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fsdp_attribute_proxy(quant_type):
    st = _state(True, quant_type)
    packed = getattr(st, f"bitsandbytes__{quant_type}")
    assert torch.equal(packed, st.as_dict(packed=True)[f"quant_state.bitsandbytes__{quant_type}"])
    other = "fp4" if quant_type == "nf4" else "nf4"
    assert not hasattr(st, f"bitsandbytes__{other}")
    with pytest.raises(AttributeError, match="no attribute 'absmax_typo'"):
        _ = st.absmax_typo


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_as_dict_from_dict_round_trip(nested, packed):
    st = _state(nested)
    back = QuantState.from_dict(st.as_dict(packed=packed), device="cpu")
    assert back == st
    assert back.equal(st)
    assert back.nested is nested


def test_from_dict_refusal_is_a_value_error():
    with pytest.raises(ValueError, match=r"quant_state\.bitsandbytes__nf4"):
        QuantState.from_dict({"absmax": torch.zeros(2)})
    assert issubclass(QuantStateError, ValueError)


def test_blockwise_state_eq_and_large_blocksize():
    torch.manual_seed(1)
    x = torch.randn(128, 128, 8)
    _q, st = quantize_blockwise(x, blocksize=16384)
    assert st.absmax.shape == (8,)
    assert st == pickle.loads(pickle.dumps(st))
    with pytest.raises(ValueError, match="blocksize=12345"):
        quantize_blockwise(x, blocksize=12345)
    with pytest.raises(ValueError, match="blocksize=8192"):
        quantize_4bit(x, blocksize=8192)
