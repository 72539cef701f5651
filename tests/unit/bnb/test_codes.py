"""Code tables: NF4/FP4 values and bit patterns, dynamic maps' SHA-256 (from the bnb 0.50.2 reference doc)."""

import hashlib

import numpy as np
import torch

from edgequant.bnb import create_dynamic_map, get_4bit_type
from edgequant.bnb.codes import sorted_codes_and_midpoints


def test_nf4_bit_patterns():
    bits = get_4bit_type("nf4").numpy().view(np.uint32)
    assert bits[0] == 0xBF800000
    assert bits[1] == 0xBF3239B1
    assert bits[8] == 0x3DA2FAFF
    assert bits[14] == 0x3F3913B3
    assert bits[7] == 0
    assert bits[15] == 0x3F800000


def test_fp4_table_in_bit_pattern_order():
    t = get_4bit_type("fp4")
    assert t[0b0011] == 1.0
    assert t[0b1011] == -1.0
    assert t[0b0101] == 0.5
    assert t[0b1000] == 0.0
    assert float(t[0b0001]) == 0.0052083334885537624
    order, _ = sorted_codes_and_midpoints("fp4")
    # stable sort puts the +0 of pattern 0b0000 before the stored +0.0 of 0b1000
    assert list(order) == [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]


def test_dynamic_maps_sha256():
    signed = create_dynamic_map(True)
    unsigned = create_dynamic_map(False)
    assert hashlib.sha256(signed.numpy().tobytes()).hexdigest() == (
        "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"
    )
    assert hashlib.sha256(unsigned.numpy().tobytes()).hexdigest() == (
        "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398"
    )
    assert signed[127] == 0
    assert signed[255] == 1
    assert float(signed[0]) == np.float32(-0.992968738)
    assert unsigned[0] == 0
    assert unsigned.dtype == torch.float32
