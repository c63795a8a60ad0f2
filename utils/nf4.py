"""NF4 (4-bit NormalFloat) from scratch, as the QLoRA paper defines it, to check bitsandbytes against.

* :func:`nf4_levels`: the 16 levels, from quantiles of a standard normal distribution;
* :func:`quantize_blockwise` / :func:`dequantize_blockwise`: absmax scaling per block of 64 weights,
  each weight replaced by the index (0..15) of its nearest level; INT4 (a uniform grid) the same way;
* :func:`bits_per_parameter` and :func:`storage_bytes`: what the codes and the per-block constants cost,
  with and without double quantization, down to the byte that bitsandbytes allocates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# QLoRA's outermost quantile: delta = (1/30 + 1/32) / 2 keeps the extreme quantiles finite (the 0 and 1
# quantiles of a normal are -inf and +inf). bitsandbytes hard-codes it rounded: 0.9677083.
NF4_OFFSET = 1 - (1 / 30 + 1 / 32) / 2


def normal_quantile(p: torch.Tensor) -> torch.Tensor:
    """The inverse CDF of N(0, 1): the value below which a share ``p`` of a normal sample lies."""
    return torch.special.ndtri(p)


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels in [-1, 1], sorted, float64.

    Asymmetric on purpose: 8 positive levels (quantiles at 8 evenly spaced probabilities from ``offset``
    down to one step above 0.5), 7 negative ones (7 such probabilities, mirrored) and an exact zero, so that
    zero (padding, pruned weights) is represented exactly and all 16 codes are used. Divided by the largest
    level, so both ends are exactly -1 and 1."""
    if not 0.5 < offset < 1:
        raise ValueError(f"offset must lie strictly between 0.5 and 1 (a probability above the median), got {offset}")
    p = lambda k: torch.linspace(offset, 0.5, k + 1, dtype=torch.float64)[:-1]  # noqa: E731 - k probabilities > 0.5
    positive, negative = normal_quantile(p(8)), -normal_quantile(p(7))
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return levels / levels.max()


def int4_levels() -> torch.Tensor:
    """Symmetric uniform INT4: the 15 levels k/7 for k = -7..7 (one of the 16 codes stays unused so that
    the grid is symmetric and has an exact zero, as symmetric integer quantization does)."""
    return torch.arange(-7, 8, dtype=torch.float64) / 7


@dataclass
class Quantized:
    """A tensor in blockwise 4-bit form: one code (0..15) per weight, one absmax per block."""
    codes: torch.Tensor      # uint8, one per weight (not packed), flattened
    absmax: torch.Tensor     # float32, one per block
    levels: torch.Tensor     # the code book, in [-1, 1]
    shape: torch.Size
    blocksize: int


def _blocks(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    if not torch.is_floating_point(w):
        raise ValueError(f"expected a floating-point weight tensor, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    if blocksize <= 0 or w.numel() % blocksize:
        raise ValueError(f"{w.numel()} weights do not split into blocks of {blocksize}: choose a blocksize that "
                         f"divides the number of weights (real weight matrices are multiples of 64).")
    return w.detach().reshape(-1, blocksize).float()


def quantize_blockwise(w: torch.Tensor, levels: torch.Tensor | None = None, blocksize: int = 64) -> Quantized:
    """Absmax quantization: each block is divided by its largest |weight| (so it lies in [-1, 1]) and
    each scaled weight is replaced by the index of the nearest level (ties go to the lower level)."""
    levels = nf4_levels() if levels is None else levels
    if not torch.isfinite(w).all():                  # one NaN or inf would turn its whole block into NaN
        bad = torch.nonzero(~torch.isfinite(w.reshape(-1)))[0].item()
        raise ValueError(f"the weights hold non-finite values (the first at flat index {bad}: "
                         f"{w.reshape(-1)[bad].item()}): quantize a model whose weights are finite.")
    blocks = _blocks(w, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    table = levels.to(torch.float32)
    codes = (scaled.reshape(-1, 1) - table).abs().argmin(dim=1)
    return Quantized(codes.to(torch.uint8), absmax, levels, w.shape, blocksize)


def dequantize_blockwise(q: Quantized, absmax: torch.Tensor | None = None) -> torch.Tensor:
    """Level of each code times its block's absmax (``absmax`` may be replaced, e.g. by a quantized copy)."""
    absmax = q.absmax if absmax is None else absmax
    values = q.levels.to(torch.float32)[q.codes.long()].reshape(-1, q.blocksize)
    return (values * absmax.float()[:, None]).reshape(q.shape)


def unpack_bnb_codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    """bitsandbytes stores two codes per byte, the first in the high 4 bits; unpack them in order."""
    b = packed.reshape(-1).view(torch.uint8)
    return torch.stack([b >> 4, b & 0xF], dim=1).reshape(-1)[:n]


# ----------------------------------------------------------------------------- what it costs in bits

def bits_per_parameter(blocksize: int = 64, double_quant: bool = False, absmax_bits: int = 32,
                       dq_bits: int = 8, dq_blocksize: int = 256) -> dict[str, float]:
    """Bits per weight of the 4-bit codes and of the per-block constants (absmax).

    Without double quantization each block of ``blocksize`` weights keeps one fp32 absmax: 32 / 64 = 0.5 bit
    per weight. With it, that absmax is stored in ``dq_bits`` = 8 bits, and every ``dq_blocksize`` = 256 of
    those 8-bit constants share one fp32 constant of their own: 8 / 64 + 32 / (64 * 256) = 0.127 bit."""
    if double_quant:
        constants = dq_bits / blocksize + absmax_bits / (blocksize * dq_blocksize)
    else:
        constants = absmax_bits / blocksize
    return {"codes": 4.0, "constants": constants, "total": 4.0 + constants}


def storage_bytes(n: int, blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> dict[str, int]:
    """Exact bytes bitsandbytes allocates for one tensor of ``n`` weights in NF4 (per tensor, not per
    weight): the packed codes, the absmax constants and, per tensor, the code books and the offset."""
    if n <= 0 or n % 2:
        raise ValueError(f"n must be a positive even number of weights, got {n}")
    n_blocks = math.ceil(n / blocksize)
    out = {"codes": n // 2, "nf4 code book": 16 * 4}
    if double_quant:
        out["absmax (8-bit)"] = n_blocks
        out["second-level absmax (fp32)"] = 4 * math.ceil(n_blocks / dq_blocksize)
        out["8-bit code book"] = 256 * 4
        out["offset (fp32)"] = 4
    else:
        out["absmax (fp32)"] = 4 * n_blocks
    return out


def bnb_storage_bytes(packed: torch.Tensor, qs) -> dict[str, int]:
    """What bitsandbytes really holds for one 4-bit tensor: its packed codes and its ``QuantState``
    (for a layer of a loaded model: ``layer.weight.data, layer.weight.quant_state``)."""
    out = {"codes": packed.nbytes, "nf4 code book": qs.code.nbytes}
    if qs.nested:
        out["absmax (8-bit)"] = qs.absmax.nbytes
        out["second-level absmax (fp32)"] = qs.state2.absmax.nbytes
        out["8-bit code book"] = qs.state2.code.nbytes
        out["offset (fp32)"] = qs.offset.nbytes
    else:
        out["absmax (fp32)"] = qs.absmax.nbytes
    return out
