"""NF4 from scratch (utils/nf4.py) against bitsandbytes: levels, codes, dequantized values, bytes."""
import pytest
import torch

import bitsandbytes.functional as bnbF
from utils import nf4


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    return torch.randn(96, 128) * 0.02          # 12,288 weights = 192 blocks of 64


def test_levels_are_bitsandbytes_table():
    levels = nf4.nf4_levels()
    table = bnbF.get_4bit_type("nf4", device="cpu").double()
    assert levels.shape == (16,)
    assert torch.allclose(levels, table, atol=1e-6, rtol=0)
    assert torch.all(levels[1:] > levels[:-1])                        # sorted, distinct
    assert levels[0] == -1 and levels[-1] == 1 and levels[7] == 0     # exact ends and exact zero
    assert (levels < 0).sum() == 7 and (levels > 0).sum() == 8


def test_levels_are_normal_quantiles():
    """The positive levels are quantiles of N(0, 1) at evenly spaced probabilities, rescaled."""
    levels = nf4.nf4_levels()
    largest = nf4.normal_quantile(torch.tensor(nf4.NF4_OFFSET, dtype=torch.float64))
    probs = torch.distributions.Normal(0.0, 1.0).cdf(levels[8:] * largest)
    gaps = probs[1:] - probs[:-1]
    assert torch.allclose(gaps, gaps[0].expand_as(gaps), atol=1e-9)


def test_codes_and_values_equal_bitsandbytes(weight):
    q = nf4.quantize_blockwise(weight)
    packed, state = bnbF.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(nf4.unpack_bnb_codes(packed, weight.numel()), q.codes)
    assert torch.equal(state.absmax, q.absmax)
    assert torch.allclose(bnbF.dequantize_4bit(packed, state), nf4.dequantize_blockwise(q), atol=1e-6, rtol=0)


def test_error_is_at_most_half_a_level_gap(weight):
    q = nf4.quantize_blockwise(weight)
    err = (nf4.dequantize_blockwise(q) - weight).reshape(-1, 64).abs()
    half_gap = (q.levels[1:] - q.levels[:-1]).max().item() / 2
    assert torch.all(err <= q.absmax[:, None] * half_gap + 1e-7)
    assert torch.all(q.absmax == weight.reshape(-1, 64).abs().amax(dim=1))   # each block's largest weight is exact


def test_nf4_beats_uniform_int4_on_normal_weights(weight):
    rmse = lambda levels: (nf4.dequantize_blockwise(nf4.quantize_blockwise(weight, levels)) - weight).pow(2).mean()  # noqa: E731
    assert rmse(nf4.nf4_levels()) < rmse(nf4.int4_levels())


def test_quantizing_twice_changes_nothing(weight):
    q = nf4.quantize_blockwise(weight)
    again = nf4.quantize_blockwise(nf4.dequantize_blockwise(q))
    assert torch.equal(again.codes, q.codes)


def test_bits_per_parameter():
    plain, dq = nf4.bits_per_parameter(), nf4.bits_per_parameter(double_quant=True)
    assert plain["constants"] == 0.5 and plain["total"] == 4.5
    assert dq["constants"] == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert plain["total"] - dq["total"] == pytest.approx(0.373, abs=5e-4)
    assert nf4.bits_per_parameter(blocksize=128)["constants"] == 0.25


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", [(96, 128), (576, 1536), (3, 64 * 300)])
def test_storage_bytes_equal_bitsandbytes_allocation(shape, double_quant):
    w = torch.randn(shape)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    assert nf4.storage_bytes(w.numel(), double_quant=double_quant) == nf4.bnb_storage_bytes(packed, state)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="do not split into blocks"):
        nf4.quantize_blockwise(torch.randn(100))
    with pytest.raises(ValueError, match="floating-point"):
        nf4.quantize_blockwise(torch.ones(64, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        nf4.quantize_blockwise(torch.empty(0))
    with pytest.raises(ValueError, match="offset"):
        nf4.nf4_levels(offset=0.4)
    with pytest.raises(ValueError, match="even number"):
        nf4.storage_bytes(63)
