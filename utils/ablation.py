"""Plain-PyTorch LoRA training and held-out evaluation for chapter 5.

* :func:`fixed_batches`: the same batches, in the same order, for every configuration (or a reshuffled
  order per seed, for the noise-floor repeat);
* :func:`summary_nll`: the summed loss on the summary tokens only, computing the vocabulary projection only
  where a label exists (a quarter of the positions: a decoder step on a CPU is 15-20 % cheaper);
* :func:`train_steps` / :func:`held_out_losses`: AdamW steps; per-dialogue mean loss on held-out dialogues.

The ablation program (``python -m experiments.ablation``, which also holds the rule that decides which
differences are findings) and notebook 05 both use these functions.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from .prompts import IGNORE_INDEX


def fixed_batches(examples: list[dict], steps: int, batch_size: int, collate, seed: int | None = None) -> list[dict]:
    """``steps`` batches drawn from ``examples`` epoch after epoch. ``seed=None``: the list's own order
    (every run sees the same data); an int: each epoch is shuffled with a generator of that seed."""
    if steps <= 0 or batch_size <= 0 or not examples:
        raise ValueError(f"need steps > 0, batch_size > 0 and examples; got {steps}, {batch_size}, {len(examples)}")
    order: list[dict] = []
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    while len(order) < steps * batch_size:
        idx = torch.randperm(len(examples), generator=gen).tolist() if gen is not None else range(len(examples))
        order += [examples[i] for i in idx]
    order = order[: steps * batch_size]
    return [collate(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def summary_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed negative log-likelihood of the labelled tokens, and their count.

    Equal to the loss transformers computes from ``labels`` (shifted by one, IGNORE_INDEX skipped), but the
    output head runs only at the positions that predict a label (``logits_to_keep`` as a boolean mask)."""
    dev = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    target = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = target != IGNORE_INDEX
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits   # (n kept, vocab)
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels[:, 1:][keep[:, :-1]],
                                            reduction="none")
    row = torch.arange(labels.shape[0], device=dev)[:, None].expand_as(keep)[keep]
    per_example = torch.zeros(labels.shape[0], device=dev, dtype=nll.dtype).index_add(0, row, nll)
    return per_example, keep.sum(1)


def adamw(model, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def train_steps(model, batches, lr: float | None = None, optimizer=None, model_loss: bool = False) -> list[float]:
    """One optimizer step per batch, loss = mean over the batch's summary tokens; AdamW on the trainable
    parameters at ``lr`` unless an ``optimizer`` is passed (to continue a run). ``model_loss``: use the model's
    own loss (``labels`` in the batch, logits at every position), as a Trainer would: what a memory measurement
    should see. Returns every step's loss."""
    if (lr is None) == (optimizer is None):
        raise ValueError("pass either lr (a fresh AdamW) or optimizer (to continue a run), not both or neither")
    opt = optimizer or adamw(model, lr)
    model.train()
    losses = []
    dev = next(model.parameters()).device
    for batch in batches:
        if model_loss:
            loss = model(**{k: v.to(dev) for k, v in batch.items()}).loss
        else:
            total, count = summary_nll(model, batch)
            loss = total.sum() / count.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def held_out_losses(model, examples: list[dict], collate, batch_size: int = 8) -> np.ndarray:
    """Mean loss per summary token, for each held-out example (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        total, count = summary_nll(model, collate(examples[i:i + batch_size]))
        out += (total / count).tolist()
    model.train(was_training)
    return np.asarray(out)


# ----------------------------------------------------------------------------- comparing two models' logits

def logits_agree(a: torch.Tensor, b: torch.Tensor, ulps: int | None = None) -> tuple[bool, dict]:
    """Do two runs of "the same" model agree, on any CPU or GPU? Float rounding differs between kernels
    (AVX2 / AVX-512 / CUDA), and a merged weight W + s BA is rounded once where the adapter path rounds twice, so a
    fixed absolute tolerance is a property of one machine. Agreement here means (1) every difference is below
    ``ulps`` units of epsilon times the logits' scale (max |a|), and (2) the greedy token (argmax) is the same at
    every position where the top two logits of ``a`` are further apart than that tolerance (a closer call is a tie
    that rounding may break either way). The epsilon is that of the coarser dtype given: fp32's, with 1024 units by
    default; a 16-bit one's (bf16: 2^-7), with 4 units by default, for logits computed in 16 bits, whose rounding
    fp32's epsilon would take for a difference. Returns the verdict and the measured figures."""
    given = [t.dtype for t in (a, b) if t.dtype.is_floating_point] + [torch.float32]
    eps = max(torch.finfo(d).eps for d in given)
    ulps = (1024 if eps == torch.finfo(torch.float32).eps else 4) if ulps is None else ulps
    a, b = a.detach().float(), b.detach().float()
    if a.shape != b.shape:
        raise ValueError(f"logits of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    scale = float(a.abs().max())
    tol = ulps * eps * max(scale, 1.0)
    diff = float((a - b).abs().max())
    top2 = a.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > tol
    same_argmax = bool((a.argmax(-1) == b.argmax(-1))[clear].all())
    return diff <= tol and same_argmax, {"max |difference|": diff, "tolerance": tol, "logit scale": scale,
                                         "positions compared": int(clear.sum()), "positions": int(clear.numel())}


def load_ablation(path) -> dict:
    """The committed ablation results (``results/ablation.json``), checked for the keys the notebook reads."""
    from pathlib import Path

    path = Path(path)
    redo = "Run `make experiments-ablation` (about 20 minutes on 2 CPU cores) to write it."
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. {redo}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged (not valid JSON: {e}). {redo}") from None
    missing = {"provenance", "configs", "base", "noise", "reproduce"} - set(data)
    missing |= {f"noise.{k}" for k in ("seeds", "groups", "floors") if "noise" in data and k not in data["noise"]}
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}: it was written by another version of the program. {redo}")
    return data


def ablation_figure(ablation: dict, title: str):
    """Held-out loss against trainable parameters for every configuration of an ablation record, with the reference
    ± margin x seed noise as a band. Labels are spread apart so that configurations of similar size stay legible;
    the base model's loss, far above, is given in the title instead of stretching the axis."""
    from .plotting import COLORS, plt

    configs, noise = ablation["configs"], ablation["noise"]
    kinds = {"q,v": ("s", COLORS["lora"], "LoRA on q, v"), "attention": ("o", COLORS["qlora"], "LoRA on q, k, v, o"),
             "all-linear": ("^", COLORS["full"], "LoRA on every linear layer")}
    if unknown := sorted({c["targets"] for c in configs.values()} - set(kinds)):
        raise ValueError(f"no marker for targets {unknown}: give each a marker, colour and label in `kinds` here.")
    fig, ax = plt.subplots(figsize=(11, 4.4))
    ref, band = configs[noise["seeds"][0]]["held_out_loss"], noise["margin"] * noise["floor"]
    widest = max(noise["floors"], key=noise["floors"].get)          # the configuration whose seeds set the floor
    ax.axhspan(ref - band, ref + band, color="#dddddd", label=f"reference ± {noise['margin']:g} x the widest\nseed "
               f"spread ({widest}, {noise['floor']:.3f})")
    order = sorted(configs, key=lambda n: configs[n]["held_out_loss"])
    losses = [configs[n]["held_out_loss"] for n in order]
    gap, label_y = 0.09 * (max(losses) - min(losses) + 2 * band), []
    for n in order:                                     # each label at least `gap` above the one below it, among
        near = [y for m, y in zip(order, label_y)       # the points of about the same size
                if abs(math.log(configs[m]["trainable"] / configs[n]["trainable"])) < 0.25]
        label_y.append(max([configs[n]["held_out_loss"]] + [y + gap for y in near[-1:]]))
    for n, y in zip(order, label_y):
        c = configs[n]
        marker, color, _ = kinds[c["targets"]]
        ax.scatter(c["trainable"], c["held_out_loss"], marker=marker, s=60, edgecolors=color,
                   facecolors="none" if c.get("lr") else color)          # hollow: the rate check, another rate
        ax.annotate(n, (c["trainable"], c["held_out_loss"]), xytext=(c["trainable"] * 1.05, y), fontsize=8, va="center",
                    arrowprops=dict(arrowstyle="-", color="#999999", lw=0.6))
    ax.set_xlim(min(c["trainable"] for c in configs.values()) / 1.15, max(c["trainable"] for c in configs.values()) * 1.6)
    ax.set_ylim(min(losses) - 2 * gap, max(label_y) + 2 * gap)
    handles = [plt.Line2D([], [], ls="", marker=m, color=col, label=lab) for k, (m, col, lab) in kinds.items()
               if any(c["targets"] == k for c in configs.values())]
    if other := sorted({c["lr"] for c in configs.values() if c.get("lr")}):
        handles.append(plt.Line2D([], [], ls="", marker="o", mfc="none", color="#555555",
                                  label=f"hollow: learning rate {', '.join(f'{x:g}' for x in other)}"))
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *handles], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))                          # beside the axes: the labels need the room
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="held-out loss per summary token (nats)")
    ax.set_title(f"{title}\nbase model without an adapter: {ablation['base']['held_out_loss']:.3f} (off this scale)",
                 fontsize=9)
    return fig
