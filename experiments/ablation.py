"""Chapter 5's LoRA ablation, as a program whose results are committed to ``results/ablation.json``.

    python -m experiments.ablation              # the whole ablation (about 20 minutes on 2 CPU cores)
    python -m experiments.ablation --dry-run    # 2 steps of one configuration: checks the machinery
    python -m experiments.ablation --only attention-r16 --steps 3

What it measures, on the real SmolLM2-135M-Instruct (dense fp32: on a CPU it is faster than the 4-bit
model, which dequantizes every weight at every matmul; the LoRA arithmetic compared is the same):

* targets: LoRA on the attention projections (q, k, v, o) at r = 16 against every linear layer at the rank whose
  parameter count matches (planner counts; alpha 32 for all, so that the step size is the same), and, when time
  allows, every linear layer at r = 16 (rank);
* alpha = 2r against alpha = r at r = 16 (attention);
* q, v against q, k, v, o at r = 16: the textbook's starting point against its next step;
* a rate check: the targets' two configurations again at twice the learning rate, not judged, shown beside them
  (all-linear moves 7 matrices per layer at each step, attention 4: were its lead only a larger step, a larger
  rate would close it);
* the reference and the matched all-linear configuration each repeated with two other seeds (initialisation,
  dropout and data order): the noise floor is the largest gap between two runs of one configuration, and the targets'
  question is answered again at each seed (a replication, reported beside the verdict, not part of it).

Every configuration trains on the same dialogues in the same order (except the seed repeats), with the same
learning rate (except the rate check) and steps, and is scored by its mean loss per summary token on held-out dialogues (the
validation split, never trained on). A difference is reported as a finding only when it
exceeds the seed noise floor by the margin of :data:`NOISE_MARGIN`, its paired
bootstrap interval over the held-out dialogues excludes zero, and its paired sign-flip p-value, Holm-adjusted
over the ablation's questions, is below :data:`ALPHA` (:func:`judge_all`): chapter 4's rule for ROUGE gains, with the
seed-noise margin added.
``--rejudge`` applies the rule again to the per-dialogue losses of the committed file, without training.

Progress is saved after each configuration (``.cache/ablation.partial.json``); an interrupted run resumes
where it stopped when started again with the same sizes. The final file is written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from utils import SEED, get_profile
from utils.ablation import adamw, fixed_batches, held_out_losses, train_steps
from utils.analysis import holm, paired_bootstrap, sign_flip_test
from utils.paths import CACHE_DIR, RESULTS_DIR
from utils.planner import lora_parameter_count, resolve_targets
from utils.profiles import SMOLLM2

RESULTS = RESULTS_DIR / "ablation.json"
PARTIAL = CACHE_DIR / "ablation.partial.json"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
QV = ("q_proj", "v_proj")


# ----------------------------------------------------------------------------- what counts as a finding

NOISE_MARGIN = 2.0        # a finding must exceed NOISE_MARGIN x the seed-to-seed difference
ALPHA = 0.05              # ... and its sign-flip p-value, Holm-adjusted over the questions, must be below this
RULE = (f"> {NOISE_MARGIN:g} x seed noise, a paired 95 % bootstrap interval without 0, and a paired sign-flip "
        f"p-value below {ALPHA:g} after Holm's adjustment over the questions")


@dataclass(frozen=True)
class Verdict:
    a: str
    b: str
    difference: float           # mean held-out loss of a - of b (negative: a is better)
    low: float                  # 95 % paired bootstrap interval of a - b over held-out dialogues
    high: float
    noise_floor: float          # the largest |difference| between two seeds of one configuration
    p: float                    # two-sided paired sign-flip p-value of a - b
    p_holm: float               # p, Holm-adjusted over the questions judged together (p itself when judged alone)
    resolved: bool

    def sentence(self) -> str:
        """Which configuration has the lower loss, by how much, with the interval of that same difference."""
        lower, higher = (self.a, self.b) if self.difference < 0 else (self.b, self.a)
        low, high = (-self.high, -self.low) if self.difference < 0 else (self.low, self.high)
        gap = f"{abs(self.difference):.4f} nats (95 % CI [{low:+.4f}, {high:+.4f}], Holm p = {self.p_holm:.2g})"
        if self.resolved:
            return f"{lower} beats {higher} by {gap}"
        return f"{lower} lower than {higher} by {gap}: not resolved"


def judge(losses: dict[str, np.ndarray], a: str, b: str, noise_floor: float, seed: int = 0) -> Verdict:
    """Compare configurations ``a`` and ``b`` by their per-dialogue held-out losses (same dialogues, same
    order), as a single question: resolved when |mean difference| > NOISE_MARGIN x ``noise_floor``, the paired
    bootstrap 95 % interval excludes zero and the paired sign-flip p-value is below ALPHA: the training noise
    (seed) and the choice of dialogues are both beaten. :func:`judge_all` judges several questions together."""
    x, y = np.asarray(losses[a], float), np.asarray(losses[b], float)
    iv = paired_bootstrap(y, x, seed=seed)            # an interval of mean(x - y), the sign of `diff`
    diff, p = float(x.mean() - y.mean()), sign_flip_test(y, x, seed=seed)
    resolved = abs(diff) > NOISE_MARGIN * noise_floor and iv.excludes_zero() and p < ALPHA
    return Verdict(a, b, diff, float(iv.low), float(iv.high), float(noise_floor), p, p, bool(resolved))


def judge_all(losses: dict[str, np.ndarray], pairs, noise_floor: float) -> list[Verdict]:
    """:func:`judge` for each (a, b) of ``pairs``, with the p-values Holm-adjusted over all of them: the more
    questions an ablation asks, the likelier one of them looks resolved by chance."""
    single = [judge(losses, a, b, noise_floor) for a, b in pairs]
    adjusted = holm([v.p for v in single]) if single else []
    return [replace(v, p_holm=float(q), resolved=bool(v.resolved and q < ALPHA)) for v, q in zip(single, adjusted)]


@dataclass(frozen=True)
class Sizes:
    steps: int = 24                 # optimizer steps per configuration (96 examples: about 1.1 passes over the 84
                                    # bundled training dialogues; 8 steps of 2 left every difference within seed noise)
    batch_size: int = 4             # small batches: LoRA tolerates large ones worse, and a step costs less here
    max_length: int = 256           # prompt + summary tokens (a longer dialogue is shortened, never the summary)
    lr: float = 1e-3                # AdamW, constant: few steps, so a rate at the high end of LoRA's usual range
    dropout: float = 0.05
    eval_batch_size: int = 8
    reproduce_steps: int = 3        # make test re-runs this many steps of the reference configuration
    reproduce_eval: int = 8         # ... and scores the first held-out dialogues after them


@dataclass(frozen=True)
class Config:
    name: str
    targets: str                    # "q,v", "attention" (q, k, v, o) or "all-linear"
    r: int
    alpha: int
    seed: int = SEED
    lr: float | None = None         # None: Sizes.lr (set only for the rate check)

    def target_modules(self, model_config) -> tuple[str, ...]:
        if self.targets == "attention":
            return ATTENTION
        if self.targets == "q,v":
            return QV
        if self.targets == "all-linear":
            return resolve_targets(model_config, "all-linear")
        raise ValueError(f"{self.name}: targets={self.targets!r} is not 'q,v', 'attention' or 'all-linear'; for another set "
                         f"of modules, add a branch here that returns their names.")


def matched_all_linear_rank(model_config, attention_r: int) -> int:
    """The all-linear rank whose trainable parameters are closest to attention-only LoRA at ``attention_r``."""
    target = lora_parameter_count(model_config, attention_r, ATTENTION)
    per_rank = lora_parameter_count(model_config, 1, "all-linear")
    return max(1, round(target / per_rank))


def configurations(model_config) -> list[Config]:
    m = matched_all_linear_rank(model_config, 16)
    return [
        Config("attention-r16", "attention", 16, 32),                      # the reference (textbook default)
        Config("attention-r16-seed2", "attention", 16, 32, seed=SEED + 1),  # the noise floor: the reference
        Config("attention-r16-seed3", "attention", 16, 32, seed=SEED + 2),  # under two other seeds
        # as many parameters as attention-r16, and its alpha: under AdamW the update then moves about as fast
        # (with alpha = 2r, r = 6 would also be a 16/6 times smaller step); the LoRA paper holds alpha across ranks
        Config(f"all-linear-r{m}-matched", "all-linear", m, 32),
        Config(f"all-linear-r{m}-matched-seed2", "all-linear", m, 32, seed=SEED + 1),   # the targets' question at the
        Config(f"all-linear-r{m}-matched-seed3", "all-linear", m, 32, seed=SEED + 2),   # reference's two other seeds
        Config("attention-r16-alpha16", "attention", 16, 16),              # alpha = r against alpha = 2r
        Config("all-linear-r16", "all-linear", 16, 32),                    # the rank question
        Config("qv-r16", "q,v", 16, 32),                                   # the textbook's first targets
        # the rate check: the targets' question again at twice the rate, so that a difference that is only the step
        # size (all-linear adapts 7 matrices per layer, attention 4) would show; run last, dropped first if time is short
        Config("attention-r16-lr2x", "attention", 16, 32, lr=2 * Sizes.lr),
        Config(f"all-linear-r{m}-matched-lr2x", "all-linear", m, 32, lr=2 * Sizes.lr),
    ]


# Pairs the notebook reads as the ablation's questions: (question, a, b).
def questions(configs: list[Config]) -> list[tuple[str, str, str]]:
    matched = next((c.name for c in configs if c.name.endswith("-matched")), None)   # None: --finish before it ran
    return [q for q in [("targets at matched parameters", "attention-r16", matched),
                        ("alpha = r vs 2r (attention r=16)", "attention-r16-alpha16", "attention-r16"),
                        ("targets at r=16", "attention-r16", "all-linear-r16"),
                        ("rank, all-linear", matched, "all-linear-r16"),
                        ("q,v vs q,k,v,o at r=16", "qv-r16", "attention-r16")] if None not in q]


# ----------------------------------------------------------------------------- data and model

def load_everything(sizes: Sizes, verbose: bool = True, profile: str | None = None):
    """Model (dense fp32), tokenizer, collator, training examples and held-out examples, on ``profile`` (default:
    the resolved one, COURSE_PROFILE or automatic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.data import load_dialogsum
    from utils.models import quiet_transformers, smollm2_checkpoint
    from utils.qlora import PadCollator, tokenize_examples

    profile = get_profile(profile)
    path = SMOLLM2 if profile.online else str(smollm2_checkpoint(verbose=verbose))
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data, source = load_dialogsum(online=profile.online, verbose=verbose)
    train = tokenize_examples(data["train"], tokenizer, sizes.max_length)
    held_df = [data["validation"]]
    held = [e for df in held_df for e in tokenize_examples(df, tokenizer, sizes.max_length)]
    ids = [i for df in held_df for i in df["id"]]
    return dict(profile=profile, model=model, tokenizer=tokenizer, collate=PadCollator(tokenizer.pad_token_id),
                train=train, held=held, held_ids=ids, source=source, model_path=path)


def run_config(env: dict, cfg: Config, sizes: Sizes, steps: int | None = None, eval_after: int | None = None,
               eval_n: int | None = None) -> dict:
    """Train one fresh adapter on the shared base, score it, remove it (the base never changes).
    ``eval_after``: also score the first ``eval_n`` held-out dialogues after that many steps."""
    from peft import get_peft_model

    from utils.memory import count_parameters
    from utils.qlora import LoRASettings, lora_config

    model, collate = env["model"], env["collate"]
    steps = steps or sizes.steps
    torch.manual_seed(cfg.seed)
    settings = LoRASettings(r=cfg.r, alpha=cfg.alpha, dropout=sizes.dropout, targets=cfg.target_modules(model.config))
    peft_model = get_peft_model(model, lora_config(settings))
    order_seed = None if cfg.seed == SEED else cfg.seed          # the reference order, or a reshuffle
    batches = fixed_batches(env["train"], steps, sizes.batch_size, collate, seed=order_seed)
    t0 = time.perf_counter()
    opt, early = adamw(peft_model, cfg.lr or sizes.lr), None
    try:
        first = eval_after or len(batches)
        losses = train_steps(peft_model, batches[:first], optimizer=opt)
        if eval_after:
            t_eval = time.perf_counter()
            early = held_out_losses(peft_model, env["held"][:eval_n], collate, sizes.eval_batch_size).tolist()
            t0 += time.perf_counter() - t_eval                   # training time only
            losses += train_steps(peft_model, batches[first:], optimizer=opt) if batches[first:] else []
        train_s = time.perf_counter() - t0
        held = held_out_losses(peft_model, env["held"], collate, sizes.eval_batch_size) if steps == sizes.steps else None
        trainable = count_parameters(peft_model)[0]
    finally:
        env["model"] = peft_model.unload()
    out = {**asdict(cfg), "trainable": trainable, "planned": lora_parameter_count(model.config, cfg.r,
                                                                                   settings.targets),
           "train_losses": losses, "train_seconds": round(train_s, 1), "seconds_per_step": round(train_s / steps, 2)}
    if held is not None:
        out |= {"held_out_loss": float(held.mean()), "held_out_per_dialogue": held.tolist()}
    if early is not None:
        out["early_held_out"] = early
    return out


# ----------------------------------------------------------------------------- the program

def provenance(env: dict, sizes: Sizes) -> dict:
    from utils import _versions
    from utils.models import smollm2_source
    from utils.profiles import cpu_model, describe_device

    return {"program": "python -m experiments.ablation", "profile": env["profile"].name, "model": SMOLLM2,
            "model_weights": "dense fp32" + smollm2_source(env["profile"].online),
            "data": env["source"], "train_dialogues": len(env["train"]), "held_out_dialogues": len(env["held"]),
            "held_out_split": "validation (never trained on)", "sizes": asdict(sizes), "cpu": cpu_model(),
            "device": describe_device(), "torch_threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         **_versions("transformers", "peft")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


SEEDS = ("attention-r16", "attention-r16-seed2", "attention-r16-seed3")   # one configuration, three seeds
REPEATS = ("", "-seed2", "-seed3")      # a configuration's name, then its seed repeats' names


def seed_groups(runs: dict) -> dict[str, list[str]]:
    """Each configuration run with more than one seed: its name -> the names of its runs (itself first)."""
    groups = {n: [n + s for s in REPEATS if n + s in runs] for n in runs if not n.endswith(REPEATS[1:])}
    return {n: names for n, names in groups.items() if len(names) > 1}


def largest_gap(runs: dict, names: list[str]) -> float:
    return max(abs(runs[a]["held_out_loss"] - runs[b]["held_out_loss"]) for i, a in enumerate(names)
               for b in names[i + 1:])


def by_seed(runs: dict, a: str, b: str) -> list[float]:
    """Held-out loss of ``a`` - of ``b`` at each seed both were run with (a replication of one question)."""
    return [runs[a + s]["held_out_loss"] - runs[b + s]["held_out_loss"] for s in REPEATS
            if a + s in runs and b + s in runs]


def summarise(runs: dict, configs: list[Config]) -> dict:
    losses = {k: np.asarray(v["held_out_per_dialogue"]) for k, v in runs.items()}
    groups = seed_groups(runs)                 # --finish may come before some repeats
    floors = {n: largest_gap(runs, names) for n, names in groups.items()}
    floor = max(floors.values())
    missing = {c.name for c in configs} - set(runs)       # --finish: some not run
    asked = [(q, a, b) for q, a, b in questions(configs) if a in losses and b in losses     # nor judged before the
             and not any(n + s in missing for n in (a, b) for s in REPEATS[1:])]          # seed repeats they have
    verdicts = judge_all(losses, [(a, b) for _, a, b in asked], floor)
    return {"noise": {"seeds": groups[SEEDS[0]], "groups": groups, "floors": floors, "floor": floor,
                      "margin": NOISE_MARGIN},
            "rule": RULE, "judged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "verdicts": [{"question": q, **asdict(v), "sentence": v.sentence(), "by_seed": by_seed(runs, a, b)}
                         for (q, a, b), v in zip(asked, verdicts)]}


def rejudge(path=RESULTS) -> dict:
    """Apply :func:`summarise` (the rule as it is now) again to the per-dialogue held-out losses of a finished ablation
    file and write it back atomically, with the time it was judged: nothing is trained, every loss stays as run."""
    from utils.ablation import load_ablation
    from utils.results import atomic_write_text

    data = load_ablation(path)
    runs = data["configs"]
    configs = [Config(n, c["targets"], c["r"], c["alpha"], c["seed"], c.get("lr")) for n, c in runs.items()]
    data |= summarise(runs, configs)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data


def _save_partial(state: dict) -> None:
    from utils.results import atomic_write_text

    atomic_write_text(PARTIAL, json.dumps(state, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="2 steps of the reference configuration; writes nothing")
    p.add_argument("--only", help="run one configuration by name (writes nothing)")
    p.add_argument("--steps", type=int, help="optimizer steps per configuration (default: %d)" % Sizes.steps)
    p.add_argument("--fresh", action="store_true", help="ignore a saved partial run")
    p.add_argument("--finish", action="store_true",
                   help="write results/ablation.json from the configurations done so far (the first two, the "
                        "reference and its seed repeat, at least), without training more")
    p.add_argument("--rejudge", action="store_true",
                   help="apply the rule for findings again to the losses of results/ablation.json, without training")
    args = p.parse_args(argv)
    if args.rejudge:
        for v in rejudge()["verdicts"]:
            print(" ", v["sentence"])
        return 0
    sizes = Sizes(**({"steps": args.steps} if args.steps else {}))
    if sizes.steps <= sizes.reproduce_steps:
        p.error(f"--steps must exceed the {sizes.reproduce_steps} reproduced steps")
    t_all = time.perf_counter()
    env = load_everything(sizes)
    configs = configurations(env["model"].config)
    by_name = {c.name: c for c in configs}
    if args.dry_run or args.only:
        cfg = by_name.get(args.only or "attention-r16")
        if cfg is None:
            p.error(f"unknown configuration {args.only!r}; known: {', '.join(by_name)}")
        out = run_config(env, cfg, sizes, steps=2 if args.dry_run else None)
        print(json.dumps({k: v for k, v in out.items() if k != "held_out_per_dialogue"}, indent=1))
        return 0

    prov = provenance(env, sizes)
    state = {"sizes": asdict(sizes), "runs": {}}
    if PARTIAL.exists() and not args.fresh:
        saved = json.loads(PARTIAL.read_text(encoding="utf-8"))
        if saved.get("sizes") == asdict(sizes):
            state = saved
            print(f"resuming: {len(state['runs'])} configuration(s) already done ({', '.join(state['runs'])})")
    if "base" not in state:
        state["base"] = held_out_losses(env["model"], env["held"], env["collate"], sizes.eval_batch_size).tolist()
    base = np.asarray(state["base"])
    for cfg in configs:
        if cfg.name in state["runs"]:
            continue
        if args.finish:
            if len(state["runs"]) < 2:
                p.error("--finish needs the reference configuration and its seed repeat done first")
            print(f"--finish: {cfg.name} not run")
            continue
        extra = dict(eval_after=sizes.reproduce_steps, eval_n=sizes.reproduce_eval) if cfg.name == "attention-r16" else {}
        out = run_config(env, cfg, sizes, **extra)
        state["runs"][cfg.name] = out
        _save_partial(state)
        print(f"{cfg.name:<28} {out['trainable']:>10,} params | held-out loss {out['held_out_loss']:.4f} | "
              f"{out['train_seconds']:.0f} s ({out['seconds_per_step']:.1f} s/step)", flush=True)
    runs = {c.name: state["runs"][c.name] for c in configs if c.name in state["runs"]}   # in configurations() order
    ref = runs["attention-r16"]
    result = {"provenance": prov | {"seconds": round(time.perf_counter() - t_all, 1),     # this process
                                    "training_seconds": round(sum(r["train_seconds"] for r in runs.values()), 1)},
              "base": {"held_out_loss": float(base.mean()), "held_out_per_dialogue": base.tolist()},
              "held_out_ids": env["held_ids"], "configs": runs, **summarise(runs, configs),
              "not_run": [c.name for c in configs if c.name not in runs],
              "reproduce": {"config": "attention-r16", "steps": sizes.reproduce_steps, "eval_n": sizes.reproduce_eval,
                            "train_losses": ref["train_losses"][:sizes.reproduce_steps],
                            "early_held_out": ref["early_held_out"]}}
    from utils.results import atomic_write_text

    atomic_write_text(RESULTS, json.dumps(result, indent=1) + "\n")
    if not result["not_run"]:
        PARTIAL.unlink(missing_ok=True)          # else kept: a later run without --finish resumes from it
    print(f"results written to {RESULTS.relative_to(RESULTS.parent.parent)} "
          f"({result['provenance']['seconds']:.0f} s); noise floor {result['noise']['floor']:.4f}")
    for v in result["verdicts"]:
        print(" ", v["sentence"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
