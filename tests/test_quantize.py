"""Quantization of expert weights: error bound, exact round trip, ORT's dequantization formula."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moec.compiler.frontend.fused import dequantize as ort_dequantize
from moec.compiler.quantize import (
    apply_precision,
    dequantize,
    error_bound,
    pack4,
    quantize,
    requantize,
    round_fp16,
    unpack4,
)
from moec.ir.errors import ModelError


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([4, 8]),
    block=st.sampled_from([None, 2, 4, 8]),
    E=st.integers(1, 3),
    N=st.integers(1, 5),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_error_within_half_a_scale(bits, block, E, N, scale, seed):
    w = (np.random.default_rng(seed).standard_normal((E, N, 16)) * scale).astype(np.float32)
    qt = quantize(w, bits, block)
    deq = dequantize(qt)
    # |w - deq| <= scale / 2 per element (float32 rounding of w/scale adds a relative 1e-6)
    assert np.all(np.abs(w - deq) <= error_bound(qt) * (1 + 1e-5))
    # the product q * scale is exact, so the scales and integers come back bit for bit
    again = requantize(deq, bits, block)
    assert again is not None
    assert np.array_equal(again.packed, qt.packed)
    assert np.array_equal(again.scales, qt.scales)


@pytest.mark.parametrize("bits,block", [(4, None), (8, None), (4, 8)])
def test_dequantize_is_ort_qmoe_formula(bits, block):
    w = np.random.default_rng(0).standard_normal((2, 6, 16)).astype(np.float32)
    qt = quantize(w, bits, block)
    want = ort_dequantize(qt.packed, qt.scales, None, bits, block)
    assert np.array_equal(dequantize(qt), want)


def test_int4_packs_two_per_byte_low_nibble_first():
    q = np.array([[[1, 2, 15, 0]]], np.uint8)
    packed = pack4(q)
    assert packed.tolist() == [[[0x21, 0x0F]]]
    assert np.array_equal(unpack4(packed), q)
    qt = quantize(np.ones((1, 3, 8), np.float32), 4)
    assert qt.packed.shape == (1, 3, 4)


def test_off_grid_weights_do_not_requantize():
    w = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    assert requantize(w, 8) is None


def test_zero_rows_and_fp16():
    w = np.zeros((1, 2, 4), np.float32)
    assert np.array_equal(dequantize(quantize(w, 4)), w)
    x = np.array([1.0001, 3.14159], np.float32)
    assert np.array_equal(round_fp16(x), x.astype(np.float16).astype(np.float32))
    assert np.array_equal(
        apply_precision(x.reshape(1, 1, 2), "fp16"), round_fp16(x).reshape(1, 1, 2)
    )


def test_bad_requests_are_errors():
    w = np.zeros((1, 2, 6), np.float32)
    with pytest.raises(ModelError, match="block size 4 does not divide the 6 input features"):
        quantize(w, 4, 4)
    with pytest.raises(ModelError, match="expected 4 or 8"):
        quantize(w, 3)
    with pytest.raises(ModelError, match="unknown expert precision 'int2'"):
        apply_precision(w, "int2")
