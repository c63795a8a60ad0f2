"""GPT-2 written from scratch (the brief's names: ``trf_blocks``, ``W_query``/``W_key``/``W_value``/
``out_proj``, ``ff``, ``out_head``), and the loader that maps OpenAI's released weights onto it.

The output head is a separate Linear (not tied to the token embedding), so GPT-2 "124M" counts
163,037,184 parameters here, the figure the brief's LoRA percentages are computed on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .architectures import OTHER_MODELS


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float = 0.0
    qkv_bias: bool = True      # OpenAI's checkpoints have biases on the query/key/value projections


def _from_hub_config(hub: dict) -> GPTConfig:
    """GPTConfig from the hub's GPT-2 config.json keys (kept once, in ``utils.architectures``)."""
    return GPTConfig(vocab_size=hub["vocab_size"], context_length=hub["n_positions"], emb_dim=hub["n_embd"],
                     n_heads=hub["n_head"], n_layers=hub["n_layer"])


GPT2_124M = _from_hub_config(OTHER_MODELS["openai-community/gpt2"])


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.emb_dim
        self.n_heads, self.head_dim = cfg.n_heads, d // cfg.n_heads
        self.W_query = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.dropout = cfg.drop_rate

    def forward(self, x):
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim), nn.GELU(approximate="tanh"),
                                    nn.Linear(4 * cfg.emb_dim, cfg.emb_dim))

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.emb_dim), nn.LayerNorm(cfg.emb_dim)
        self.att, self.ff = MultiHeadAttention(cfg), FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg: GPTConfig = GPT2_124M):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = nn.LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # GPT-2's initialisation: N(0, 0.02) weights, zero biases.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.cfg.context_length:
            raise ValueError(f"sequence of {t} tokens is longer than the context ({self.cfg.context_length}).")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        x = self.final_norm(self.trf_blocks(self.drop_emb(x)))
        return self.out_head(x)


def load_hf_gpt2_state_dict(model: GPTModel, sd: dict[str, torch.Tensor]) -> GPTModel:
    """Copy a Hugging Face GPT-2 state dict (``GPT2LMHeadModel`` or the hub's ``model.safetensors``)
    into ``model``. HF stores Linear weights as Conv1D, i.e. transposed, and fuses q, k, v."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    d = model.cfg.emb_dim

    def put(param, value):
        if param.shape != value.shape:
            raise ValueError(f"shape mismatch: model {tuple(param.shape)} vs checkpoint {tuple(value.shape)}")
        param.data.copy_(value)

    with torch.no_grad():
        put(model.tok_emb.weight, sd["wte.weight"])
        put(model.pos_emb.weight, sd["wpe.weight"][: model.cfg.context_length])
        for i, blk in enumerate(model.trf_blocks):
            p = f"h.{i}."
            qw, kw, vw = sd[p + "attn.c_attn.weight"].split(d, dim=1)
            qb, kb, vb = sd[p + "attn.c_attn.bias"].split(d, dim=0)
            for lin, w, b in ((blk.att.W_query, qw, qb), (blk.att.W_key, kw, kb), (blk.att.W_value, vw, vb)):
                put(lin.weight, w.T)
                put(lin.bias, b)
            put(blk.att.out_proj.weight, sd[p + "attn.c_proj.weight"].T)
            put(blk.att.out_proj.bias, sd[p + "attn.c_proj.bias"])
            put(blk.ff.layers[0].weight, sd[p + "mlp.c_fc.weight"].T)
            put(blk.ff.layers[0].bias, sd[p + "mlp.c_fc.bias"])
            put(blk.ff.layers[2].weight, sd[p + "mlp.c_proj.weight"].T)
            put(blk.ff.layers[2].bias, sd[p + "mlp.c_proj.bias"])
            for ours, theirs in ((blk.norm1, "ln_1"), (blk.norm2, "ln_2")):
                put(ours.weight, sd[p + theirs + ".weight"])
                put(ours.bias, sd[p + theirs + ".bias"])
        put(model.final_norm.weight, sd["ln_f.weight"])
        put(model.final_norm.bias, sd["ln_f.bias"])
        # GPT-2 ties its head to the token embedding; our head is a separate copy.
        put(model.out_head.weight, sd.get("lm_head.weight", sd["wte.weight"]))
    return model


def load_pretrained_gpt2(repo_id: str = "openai-community/gpt2") -> GPTModel:
    """The real path: OpenAI's GPT-2 124M weights from the hub, in the from-scratch model."""
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    path = hf_hub_download(repo_id, "model.safetensors")
    return load_hf_gpt2_state_dict(GPTModel(GPT2_124M), load_file(path)).eval()
