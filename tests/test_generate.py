"""utils.generate: one summary generator for seq2seq (T5) and causal chat models (SmolLM2), and chapter 2's
shared set-up (utils.full_vs_lora): same data order for both methods, exact LoRA counts, the sweep's choice."""
import pytest
import torch

from utils.generate import generate_summaries, model_family, stop_token_ids

DIALOGUES = ["#Person1#: Can I return these shoes?\n#Person2#: Yes, with the receipt, within thirty days.",
             "#Person1#: Is the train to Leeds late?\n#Person2#: Twenty minutes, because of the snow. "
             "Platform four.\n#Person1#: Thanks, I'll get a coffee then.",
             "#Person1#: Hi."]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.models import smollm2_checkpoint

    path = smollm2_checkpoint(verbose=False)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from t5_stand_in import offline_t5_tokenizer, tiny_t5_checkpoint
    from utils.t5 import load_t5

    tok = offline_t5_tokenizer()
    path = tiny_t5_checkpoint(tok, tmp_path_factory.mktemp("t5") / "init")
    return load_t5(path, tok, device="cpu"), tok


@pytest.mark.parametrize("which", ["tiny_t5", "smollm2"])
def test_one_string_per_dialogue_deterministic_and_batch_size_independent(which, request):
    model, tok = request.getfixturevalue(which)
    batched = generate_summaries(model, tok, DIALOGUES, max_new_tokens=12, batch_size=3)
    again = generate_summaries(model, tok, DIALOGUES, max_new_tokens=12, batch_size=3)
    one_by_one = [generate_summaries(model, tok, [d], max_new_tokens=12, batch_size=1)[0] for d in DIALOGUES]
    assert len(batched) == len(DIALOGUES) and all(isinstance(s, str) for s in batched)
    assert batched == again == one_by_one
    assert any(batched)                                            # something was generated


def test_families_and_stop_tokens(tiny_t5, smollm2):
    t5, t5_tok = tiny_t5
    lm, lm_tok = smollm2
    assert model_family(t5) == "seq2seq" and model_family(lm) == "causal"
    assert stop_token_ids(t5, t5_tok) == [t5_tok.eos_token_id]     # T5's pad starts the decoder: never a stop
    assert lm_tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(lm, lm_tok)


def test_a_chat_model_answers_the_dialogue_not_the_template(smollm2):
    """The real SmolLM2 (pretrained weights) answers after the assistant header: no template tokens, no
    'user'/'assistant' turn headers in the text, and it stops before the budget on a one-line dialogue."""
    model, tok = smollm2
    out = generate_summaries(model, tok, [DIALOGUES[0]], max_new_tokens=60)[0]
    assert out and "<|im_start|>" not in out and "<|im_end|>" not in out
    assert not {line.strip() for line in out.splitlines()} & {"user", "assistant"}
    from utils.mistakes import stops_by_itself
    assert stops_by_itself(model, tok, [DIALOGUES[0]], max_new_tokens=60)[0] is not None


def test_bad_input_is_a_clear_error(tiny_t5):
    model, tok = tiny_t5
    with pytest.raises(ValueError, match="single string"):
        generate_summaries(model, tok, DIALOGUES[0], 8)
    with pytest.raises(ValueError, match="empty"):
        generate_summaries(model, tok, [], 8)
    with pytest.raises(ValueError, match="at least 1"):
        generate_summaries(model, tok, DIALOGUES, 8, batch_size=0)


def test_old_names_delegate_to_the_one_generator(smollm2):
    from utils.qlora import generate_summaries as qlora_generate

    model, tok = smollm2
    assert qlora_generate(model, tok, DIALOGUES[:2], 8, batch_size=2) == generate_summaries(model, tok, DIALOGUES[:2], 8)


# ----------------------------------------------------------------------------- chapter 2's set-up

def test_smollm2_lora_recipe_counts_exactly():
    """The brief's T5 recipe (r=32, alpha=32 on query and value) on SmolLM2-135M: 30 layers x 32 x
    ((576 + 576) + (576 + 192)) = 1,843,200 of 134,515,008 + 1,843,200."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from utils.full_vs_lora import CAUSAL_LORA, SummaryTask, lora_config
    from utils.memory import count_parameters
    from utils.models import smollm2_checkpoint

    config = AutoConfig.from_pretrained(smollm2_checkpoint(verbose=False))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    assert count_parameters(base)[1] == 134_515_008
    peft_model = get_peft_model(base, lora_config(SummaryTask("causal", "", "", None)))
    assert count_parameters(peft_model) == (1_843_200, 134_515_008 + 1_843_200)
    assert CAUSAL_LORA["r"] == CAUSAL_LORA["lora_alpha"] == 32


def _tiny_summary_task(tiny_t5, tmp_path, n: int, max_steps: int):
    """The tiny T5 saved as a chapter-2 task, ``n`` tokenized dialogue/summary pairs, and sizes of ``max_steps``."""
    import pandas as pd

    from utils.full_vs_lora import SummaryTask, tokenize
    from utils.profiles import SummarySizes

    task = SummaryTask("seq2seq", str(tmp_path / "base"), "tiny", tiny_t5[1])
    tiny_t5[0].save_pretrained(task.name_or_path)
    frame = pd.DataFrame({"dialogue": [f"#Person1#: Order {i} is late.\n#Person2#: I will check." for i in range(n)],
                          "summary": [f"#Person2# checks order {i}." for i in range(n)]})
    sizes = SummarySizes(train=n, eval=2, max_steps=max_steps, batch_size=2, max_source_length=64, max_target_length=16,
                         max_new_tokens=4, lr_full=1e-3, lr_lora=1e-2)
    return task, tokenize(task, frame, sizes), sizes


def test_both_methods_see_the_same_batches_in_the_same_order(tiny_t5, tmp_path):
    """Full fine-tuning and LoRA, trained through train_method, read identical batches in identical order."""
    from utils.full_vs_lora import collator, make_model, train_method

    task, examples, sizes = _tiny_summary_task(tiny_t5, tmp_path, 6, 3)
    seen = {}
    for method in ("full", "lora"):
        calls = []
        base_collate = collator(task)

        def record(batch, calls=calls, base_collate=base_collate):
            calls.append([b["input_ids"] for b in batch])
            return base_collate(batch)

        import utils.full_vs_lora as fvl
        original = fvl.collator
        fvl.collator = lambda t: record
        try:
            run = train_method(task, make_model(task, method, 0), examples, examples[:2], sizes, 1e-3,
                               tmp_path / method, seed=0, eval_points=1)
        finally:
            fvl.collator = original
        seen[method] = calls
        assert len(run["loss"]) == 3 and len(run["eval_loss"]) == 1
    assert seen["full"] == seen["lora"] and len(seen["full"]) >= 3


def test_best_rates_pick_the_lowest_heldout_loss_and_runner_up_says_how_close_the_next_is():
    from utils.full_vs_lora import best_rates, runner_up

    sweep = {"runs": [{"method": "full", "lr": 1e-5, "heldout_loss": 2.0}, {"method": "full", "lr": 1e-4, "heldout_loss": 1.5},
                      {"method": "lora", "lr": 1e-3, "heldout_loss": 1.6}, {"method": "lora", "lr": 1e-4, "heldout_loss": 1.9},
                      {"method": "lora", "lr": 3e-3, "heldout_loss": None}]}
    assert best_rates(sweep) == {"full": 1e-4, "lora": 1e-3}
    assert runner_up(sweep, "lora") == (1e-4, pytest.approx(0.3))      # the unfinished 3e-3 is not ranked
    assert runner_up({"runs": sweep["runs"][:1] + sweep["runs"][2:3]}, "full") is None
    with pytest.raises(ValueError, match="no finished run"):
        best_rates({"runs": sweep["runs"][:2]})


def test_rate_ratio_says_when_a_best_rate_sits_on_the_edge_of_its_grid():
    from utils.full_vs_lora import rate_ratio

    def sweep(full, lora):
        return {"runs": [{"method": m, "lr": lr} for m, rates in (("full", full), ("lora", lora)) for lr in rates]}

    inside = sweep([3e-5, 1e-4, 3e-4], [3e-4, 1e-3, 3e-3])
    assert rate_ratio(inside, {"full": 1e-4, "lora": 1e-3}) == (pytest.approx(10), "")
    assert rate_ratio(inside, {"full": 1e-4, "lora": 3e-3}) == (pytest.approx(30), "at least ")   # LoRA's top rate won
    assert rate_ratio(inside, {"full": 3e-5, "lora": 1e-3}) == (pytest.approx(1e-3 / 3e-5), "at least ")
    assert rate_ratio(inside, {"full": 1e-4, "lora": 3e-4}) == (pytest.approx(3), "at most ")
    assert rate_ratio(inside, {"full": 3e-4, "lora": 1e-3})[1] == "at most "
    assert rate_ratio(inside, {"full": 3e-4, "lora": 3e-3})[1] == "undetermined: "


def test_committed_sweep_trains_as_notebook_02():
    """The sweep's claim, "exactly as notebook 02 does", on the committed files: at the notebook's two rates the
    sweep's held-out loss is the notebook's, to the printed digit. It failed (LoRA 3e-3: 1.3171 against 1.3137)
    while the sweep evaluated once per run and the notebook twice: each evaluation moves LoRA's dropout draws."""
    from utils.paths import RESULTS_DIR
    from utils.results import load_results

    if not all((RESULTS_DIR / f"{n}.json").is_file() for n in ("lr_sweep", "02_flan_t5_full_vs_lora")):
        pytest.skip("results/lr_sweep.json or results/02_flan_t5_full_vs_lora.json is not committed")
    sweep, nb = load_results("lr_sweep"), load_results("02_flan_t5_full_vs_lora")
    same = {"profile": (sweep["profile"], nb["profile"]), "model": (sweep["model"], nb["model"]),
            "cpu": (sweep["cpu"], nb["cpu"]), "data": (sweep["data_source"], nb["data_source"]),
            "train": (sweep["sizes"]["train"], nb["sizes"]["train"]),
            "held-out": (sweep["sizes"]["heldout"], nb["sizes"]["validation"]),
            "steps": (sweep["sizes"]["max_steps"], nb["max_steps"]), "batch": (sweep["sizes"]["batch_size"], nb["batch_size"])}
    differ = {k: v for k, v in same.items() if v[0] != v[1]}
    if differ:      # float rounding differs between CPUs: only runs of one set-up on one CPU must agree
        pytest.skip(f"the sweep and notebook 02 come from different set-ups: {differ}")
    for method, lr in nb["lr"].items():
        rows = [r for r in sweep["runs"] if r["method"] == method and r["lr"] == pytest.approx(lr)]
        assert len(rows) == 1, f"the sweep has no single {method} run at notebook 02's rate {lr:g}"
        assert rows[0]["heldout_loss"] == pytest.approx(nb["eval_losses"][method][-1][1], abs=1e-6), method


def test_sweep_add_keeps_comparable_runs_only():
    from experiments.lr_sweep import _kept_runs

    sizes = {"train": 84, "max_steps": 10}
    record = {"profile": "smoke", "model": "m", "data_source": "d", "sizes": dict(sizes),
              "grid": {"full": [1e-4], "lora": [3e-3, 1e-2]}}
    earlier = {**{k: record[k] for k in ("profile", "model", "data_source")}, "sizes": dict(sizes), "date": "day 1",
               "seconds": 60.0, "runs": [{"method": "lora", "lr": 1e-3, "heldout_loss": 1.3}]}
    kept = _kept_runs(earlier, record)
    assert kept == [{"date": "day 1", "method": "lora", "lr": 1e-3, "heldout_loss": 1.3}]
    assert record["grid"] == {"full": [1e-4], "lora": [1e-3, 3e-3, 1e-2]} and record["earlier_seconds"] == 60.0
    with pytest.raises(SystemExit, match=r"--add: the earlier sweep has sizes .* not comparable"):
        _kept_runs({**earlier, "sizes": {**sizes, "max_steps": 20}}, dict(record))


def test_a_diverging_run_records_its_non_finite_loss(tiny_t5, tmp_path):
    """Logits that overflow from the third training step on (as T5's do in fp16): the Trainer's default would log a
    non-finite step as the mean of its logging window (0.0 with a log every step: a perfect loss); train_method's
    losses must show it as it is."""
    import math

    from utils.full_vs_lora import make_model, train_method

    task, examples, sizes = _tiny_summary_task(tiny_t5, tmp_path, 4, 4)
    model, calls = make_model(task, "full", 0), []

    def overflow(module, inputs, logits):
        calls.append(module.training)
        return logits * float("nan") if module.training and sum(calls) >= 3 else logits

    model.lm_head.register_forward_hook(overflow)
    run = train_method(task, model, examples, examples[:2], sizes, 1e-3, tmp_path / "full", seed=0, eval_points=1)
    losses = [loss for _, loss in run["loss"]]
    assert math.isfinite(losses[0]) and math.isnan(losses[-1]) and 0.0 not in losses, losses
