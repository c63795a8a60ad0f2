"""A small measured learning-rate sweep for chapter 2: full fine-tuning and LoRA, each at 3-4 rates.

    python -m experiments.lr_sweep            # or: make experiments-lr   (COURSE_PROFILE picks the profile)

Every run starts from the same base weights and trains through ``utils.full_vs_lora.train_method``, exactly as
notebook 02 does: the same training dialogues in the same order, the same number of optimizer steps and batch, and
the same evaluations during training; only the method and the rate change. The evaluations matter: each pass over
the validation dialogues starts a DataLoader, which draws one number from PyTorch's global random generator, so
evaluating at other steps changes LoRA's later dropout masks (full fine-tuning of SmolLM2 has no dropout). A sweep
evaluating once per run scored LoRA at 3e-3 at 1.3171 where the notebook, evaluating twice, scores 1.3137.

Each run records its held-out loss (the mean loss on the validation dialogues' summaries after the last step) and
ROUGE on a few validation dialogues. The best rate of each method is the one of lowest held-out loss; their ratio
tests the 2025 literature's claim ("LoRA Without Regret") that the best LoRA rate is about 10x the best full
fine-tuning rate.

The results go to ``results/lr_sweep.json`` (written atomically after every run, ``complete`` false until the
last one), with their provenance: profile, model, data, sizes, date, CPU, versions and seconds.

``--add`` keeps the runs already in that file and trains only the rates it lacks (each run starts from the same
weights and batches, so a run does not depend on the others): widening the grid costs one run per new rate. The file
must come from the same profile, model, data and sizes, or the sweep stops and says which differs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import time

import torch


def _grid(text: str | None, default) -> tuple[float, ...]:
    if not text:
        return tuple(default)
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--rates {text!r}: give learning rates separated by commas, e.g. 1e-5,1e-4") from None
    if not rates or any(r <= 0 for r in rates):
        raise SystemExit(f"--rates {text!r}: every learning rate must be positive.")
    return rates


def _kept_runs(previous: dict, record: dict) -> list[dict]:
    """The runs of an earlier sweep that ``record`` can reuse: only from the same profile, model, data and sizes."""
    for key in ("profile", "model", "data_source", "sizes"):
        if previous.get(key) != record[key]:
            raise SystemExit(f"--add: the earlier sweep has {key} {previous.get(key)!r}, this one {record[key]!r}; its "
                             f"runs are not comparable. Re-run the whole sweep (without --add) or write to another --out.")
    kept = [{"date": previous.get("date"), **r} for r in previous.get("runs", [])]
    record["grid"] = {m: sorted({*record["grid"][m], *(r["lr"] for r in kept if r["method"] == m)}) for m in record["grid"]}
    record["earlier_seconds"] = previous.get("seconds")      # the total below counts every invocation
    print(f"--add: keeping {len(kept)} run(s) of the earlier sweep ({previous.get('date')})", flush=True)
    return kept


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-rates", help="comma-separated rates for full fine-tuning (default: the profile's)")
    parser.add_argument("--lora-rates", help="comma-separated rates for LoRA (default: the profile's)")
    parser.add_argument("--out", default="lr_sweep", help="results/<OUT>.json (default: lr_sweep)")
    parser.add_argument("--add", action="store_true",
                        help="keep the runs already in results/<OUT>.json and train only the rates it lacks")
    args = parser.parse_args(argv)

    import utils
    from utils.data import load_dialogsum, take
    from utils.full_vs_lora import EVAL_POINTS, best_rates, make_model, output_dir, summary_task, tokenize, train_method
    from utils.generate import generate_summaries
    from utils.metrics import rouge
    from utils.results import load_results, save_results

    t0 = time.perf_counter()
    profile = utils.get_profile()
    S = profile.summary
    grids = {"full": _grid(args.full_rates, S.lr_grid_full), "lora": _grid(args.lora_rates, S.lr_grid_lora)}
    task = summary_task(profile)
    dialogsum, source = load_dialogsum(online=profile.online, splits=("train", "validation"), verbose=False)
    train_df = take(dialogsum["train"], S.train, "train", verbose=False)
    val_df = take(dialogsum["validation"], S.heldout, "validation", verbose=False)
    rouge_df = val_df.iloc[: S.sweep_rouge]
    train_ex, val_ex = tokenize(task, train_df, S), tokenize(task, val_df, S)
    record = {
        "experiment": "lr_sweep", "complete": False, "profile": profile.name, "model": task.display,
        "family": task.family, "data_source": source,
        "sizes": {"train": len(train_df), "heldout": len(val_df), "rouge_dialogues": len(rouge_df),
                  "max_steps": S.max_steps, "batch_size": S.batch_size,
                  "max_length": S.max_source_length + S.max_target_length, "max_new_tokens": S.max_new_tokens,
                  "evaluations": EVAL_POINTS},
        "grid": grids, "selection": "lowest held-out loss (mean cross-entropy on the validation summaries)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": utils.describe_device(),
        "cpu": utils.cpu_model(), "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__}, "runs": []}
    if args.add:
        record["runs"] = _kept_runs(load_results(args.out), record)
    print(f"lr sweep | {profile.name} | {task.display} | {len(train_df)} training dialogues, {S.max_steps} steps "
          f"of {S.batch_size} | held-out loss on {len(val_df)}, ROUGE on {len(rouge_df)} | {source}", flush=True)
    for method, rates in grids.items():
        for lr in rates:
            if any(r["method"] == method and r["lr"] == lr for r in record["runs"]):
                continue
            model = make_model(task, method, utils.SEED)
            run = train_method(task, model, train_ex, val_ex, S, lr, output_dir(utils.CACHE_DIR, "sweep"), utils.SEED)
            heldout = run["eval_loss"][-1][1] if run["eval_loss"] else float("nan")
            preds = generate_summaries(model, task.tokenizer, list(rouge_df["dialogue"]), S.max_new_tokens,
                                       batch_size=S.batch_size, max_prompt_tokens=S.max_source_length)
            scores = rouge(preds, rouge_df["references"])
            record["runs"].append({"method": method, "lr": lr, "heldout_loss": None if math.isnan(heldout) else heldout,
                                   "train_loss_first": run["loss"][0][1], "train_loss_last": run["loss"][-1][1],
                                   "rouge": scores, "seconds": round(run["seconds"], 1), "date": record["date"],
                                   "example": preds[0]})
            print(f"{method:>4} lr {lr:.0e}: held-out loss {heldout:.3f} | ROUGE-2 {scores['rouge2']:.3f} | "
                  f"{run['seconds']:.0f} s", flush=True)
            del model
            record["seconds"] = round(time.perf_counter() - t0 + (record.get("earlier_seconds") or 0), 1)
            save_results(args.out, record)
    best = best_rates(record)
    record.update(complete=True, best=best, ratio_lora_over_full=best["lora"] / best["full"], literature_ratio=10.0,
                  seconds=round(time.perf_counter() - t0 + (record.get("earlier_seconds") or 0), 1))
    path = save_results(args.out, record)
    print(f"best: full {best['full']:.0e}, LoRA {best['lora']:.0e} -> ratio {record['ratio_lora_over_full']:.0f}x "
          f"(literature: ~10x) | {record['seconds']:.0f} s | {path}", flush=True)
    return record


if __name__ == "__main__":
    main()
