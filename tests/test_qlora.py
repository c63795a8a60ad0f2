"""The chapter-3 recipe's helpers: chat examples, exact LoRA counts, and the 4-bit CPU trap."""
import types

import pytest
import torch
from peft import get_peft_model

from utils.architectures import llama_config, meta_model
from utils.memory import count_parameters
from utils.prompts import IGNORE_INDEX, build_chat_example
from utils.planner import lora_parameter_count
from utils.qlora import LoRASettings, PadCollator, lora_config, optimizer_name

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tok():
    from utils.models import offline_tokenizer
    return offline_tokenizer()


DIALOGUE = "#Person1#: Can I return these shoes?\n#Person2#: Yes, with the receipt."
SUMMARY = "#Person1# returns shoes with a receipt."


def test_labels_mask_the_prompt_and_keep_the_summary(tok):
    ex = build_chat_example(tok, DIALOGUE, SUMMARY, max_length=256)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels) == len(ex["attention_mask"])
    n_prompt = labels.count(IGNORE_INDEX)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and IGNORE_INDEX not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(labels[n_prompt:], skip_special_tokens=True).strip() == SUMMARY
    assert labels[-1] == tok.eos_token_id                      # the model learns to stop


def test_truncation_shortens_the_dialogue_not_the_summary(tok):
    long_dialogue = "\n".join(f"#Person{1 + i % 2}#: sentence number {i} of a long talk." for i in range(200))
    ex = build_chat_example(tok, long_dialogue, SUMMARY, max_length=120)
    assert len(ex["input_ids"]) <= 120
    answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tok.decode(answer, skip_special_tokens=True).strip() == SUMMARY


def test_bad_examples_are_clear_errors(tok):
    with pytest.raises(ValueError, match="empty dialogue"):
        build_chat_example(tok, "  ", SUMMARY, 256)
    with pytest.raises(ValueError, match="empty summary"):
        build_chat_example(tok, DIALOGUE, None, 256)
    with pytest.raises(ValueError, match="more than max_length.*COURSE_OVERRIDE=<section>.max_length"):
        build_chat_example(tok, DIALOGUE, SUMMARY * 20, 40)


def test_a_max_length_too_small_for_the_template_names_the_setting_and_the_row(tok):
    """A max_length that fits the summary but not the chat template once said only "the chat template alone needs
    51 tokens, more than 26", from deep inside the prompt builder: no setting, no row."""
    import pandas as pd

    from utils.qlora import tokenize_examples
    frame = pd.DataFrame({"id": ["train_7", "train_8"], "dialogue": [DIALOGUE, DIALOGUE], "summary": ["Fine.", "Yes."]})
    with pytest.raises(ValueError, match=r"example 0 \(id train_7\): max_length=30 is too small.*chat template alone "
                                         r"needs \d+ tokens.*COURSE_OVERRIDE=<section>.max_length"):
        tokenize_examples(frame, tok, 30)
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['summary'\]"):
        tokenize_examples(frame.drop(columns="summary"), tok, 256)
    assert len(tokenize_examples(frame, tok, 256)) == 2


def test_pad_collator():
    batch = PadCollator(pad_id=7)([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3]},
                                   {"input_ids": [4], "attention_mask": [1], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


@pytest.mark.parametrize("name, total, qkvo, all_linear", [
    ("meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824, 9_175_040, 24_313_856),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, 1_843_200, 4_884_480),
])
def test_exact_counts_from_configuration(name, total, qkvo, all_linear):
    config = llama_config(name)
    assert count_parameters(meta_model(config))[1] == total
    assert lora_parameter_count(config, 16, LoRASettings().targets) == qkvo
    assert lora_parameter_count(config, 16, ALL_LINEAR) == all_linear
    peft_model = get_peft_model(meta_model(config), lora_config(LoRASettings(r=16)))
    assert count_parameters(peft_model)[0] == qkvo              # PEFT agrees with the formula


def test_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="unknown or no target"):
        lora_parameter_count(llama_config("HuggingFaceTB/SmolLM2-135M-Instruct"), 16, ("qkv",))


def test_paged_8bit_adamw_on_cuda_plain_adamw_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert optimizer_name() == "adamw_torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert optimizer_name() == "paged_adamw_8bit"


# ----------------------------------------------------------------------------- the 4-bit CPU trap

@pytest.fixture(scope="module")
def model_4bit():
    from utils.models import load_causal_lm_4bit, smollm2_checkpoint
    model, _ = load_causal_lm_4bit(smollm2_checkpoint(verbose=False))
    return model


def test_4bit_weights_are_really_nf4_and_counted_exactly(model_4bit):
    import bitsandbytes as bnb
    layer = model_4bit.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.dtype == torch.uint8
    assert count_parameters(model_4bit)[1] == 134_515_008


def test_gradients_flow_after_an_eval_pass(model_4bit):
    from utils.models import four_bit_gradient_matches
    """The order a course follows: evaluate the base, then train. Gradients through the frozen 4-bit
    matmul must still equal those of the dequantized weight."""
    layer = model_4bit.model.layers[1].self_attn.q_proj
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, layer.in_features))
    assert four_bit_gradient_matches(layer)


def test_the_loader_switches_the_repacking_off_on_any_cpu(monkeypatch):
    """bitsandbytes arms the repacking when it builds a layer on a CPU with AVX512-BF16 (support_avx512bf16_for_cpu =
    has_avx512bf16()). Simulated on any CPU here: the course's loader must switch it off on every 4-bit layer (on a CPU
    without AVX512-BF16 the flag starts off, and the gradient check above would pass without the guard)."""
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules

    from utils.models import load_causal_lm_4bit, smollm2_checkpoint

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    model, _ = load_causal_lm_4bit(smollm2_checkpoint(verbose=False))
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 210 and not any(m.support_avx512bf16_for_cpu for m in four_bit)


def test_keep_4bit_trainable_undoes_a_cpu_repacking(model_4bit):
    from bitsandbytes.functional import has_avx512bf16
    from utils.models import four_bit_gradient_matches, keep_4bit_trainable
    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    layer = model_4bit.model.layers[2].self_attn.v_proj
    layer.support_avx512bf16_for_cpu = True               # what bitsandbytes sets by default
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, layer.in_features))
    assert layer.weight.quant_state.packing_format_for_cpu  # the trap is armed
    assert keep_4bit_trainable(layer) == 1
    assert four_bit_gradient_matches(layer)


def test_gradient_check_sees_a_working_layer_and_a_broken_one(model_4bit):
    """utils.models.four_bit_gradient_matches (notebook 03's check) must say True on a layer that trains
    and False on one the CPU trap has broken, or its True in the notebook would mean nothing."""
    from bitsandbytes.functional import has_avx512bf16
    from utils.models import four_bit_gradient_matches, keep_4bit_trainable
    layer = model_4bit.model.layers[3].self_attn.o_proj
    assert four_bit_gradient_matches(layer)
    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: the trap cannot be armed here")
    layer.support_avx512bf16_for_cpu = True
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, layer.in_features))
    assert not four_bit_gradient_matches(layer)
    keep_4bit_trainable(layer)
    assert four_bit_gradient_matches(layer)


def test_gradient_check_fails_when_no_gradient_flows(model_4bit):
    """A layer whose output is cut from the graph (what the CPU trap does) must fail the check, on any CPU."""
    from utils.models import four_bit_gradient_matches
    layer = model_4bit.model.layers[4].mlp.down_proj
    handle = layer.register_forward_hook(lambda m, i, out: out.detach().requires_grad_(True))
    try:
        assert not four_bit_gradient_matches(layer)
    finally:
        handle.remove()
    assert four_bit_gradient_matches(layer)


# ------------------------------------------------------- mixed precision: "adapters off = base" after training

@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (the real family and module names) saved as a checkpoint: code paths only."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    return path


def _load_tiny_4bit(path):
    from transformers import AutoModelForCausalLM
    from utils.models import bnb_4bit_config, compute_dtype, keep_4bit_trainable
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_4bit_config(), dtype=compute_dtype(),
                                                 device_map={"": "cpu"})
    keep_4bit_trainable(model)
    return model


def test_adapters_off_equals_base_after_bf16_training(tiny_llama_dir, tmp_path, monkeypatch):
    """Defect 1 of the real path, with bf16 on the CPU standing in for a T4's fp16: the base loaded in 16 bits,
    Trainer.train() in mixed precision. Notebook 03's order: prepare the base, THEN take the base's logits, attach
    LoRA, train, remove Accelerate's autocast wrapper; then "adapters off" must equal the base to the bit."""
    from transformers import Trainer
    from utils.models import compute_dtype, drop_mixed_precision_wrapper
    from utils.qlora import attach_lora, prepare_4bit_base, training_arguments

    monkeypatch.setenv("COURSE_MIXED_PRECISION", "bf16")
    assert compute_dtype() == torch.bfloat16
    model = _load_tiny_4bit(tiny_llama_dir)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16          # as on a T4 in fp16
    g = torch.Generator().manual_seed(0)
    probe = {"input_ids": torch.randint(3, 256, (2, 12), generator=g), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    model.eval()
    with torch.no_grad():
        unprepared = model(**probe).logits.float()
    model = prepare_4bit_base(model)                                          # norms, embeddings -> fp32
    model.eval()
    with torch.no_grad():
        base = model(**probe).logits.float()
    assert not torch.equal(unprepared, base), "preparing should change a 16-bit base: the test would prove nothing"

    model = attach_lora(model, LoRASettings(r=4, alpha=8, dropout=0.0))
    examples = [{"input_ids": row.tolist(), "attention_mask": [1] * 12, "labels": row.tolist()}
                for row in torch.randint(3, 256, (4, 12), generator=g)]
    sizes = type("Sizes", (), {"epochs": 1, "batch_size": 2, "grad_accum": 1, "lr": 1e-2})()
    args = training_arguments(sizes, tmp_path / "trainer", compute_dtype(), max_steps=2, disable_tqdm=True)
    assert args.bf16 and not args.fp16
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(0))
    trainer.train()

    def off_logits():
        model.eval()
        with torch.no_grad(), model.disable_adapter():
            return model(**probe).logits.float()

    assert not torch.equal(off_logits(), base), "without the fix, autocast stays on model.forward (the defect)"
    assert drop_mixed_precision_wrapper(trainer) is model
    assert torch.equal(off_logits(), base)                                    # adapters off = base, to the bit
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(**probe).logits.float(), base, atol=1e-4)   # the adapters did train


def _notebook_03_code() -> list[str]:
    import nbformat
    from utils.paths import ROOT
    nb = nbformat.read(ROOT / "notebooks" / "03_qlora_llama32_dialogsum.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _first(cells: list[str], fragment: str) -> int:
    hits = [i for i, s in enumerate(cells) if fragment in s]
    assert hits, f"notebook 03 has no code cell with {fragment!r}"
    return hits[0]


def test_notebook_03_compares_like_with_like():
    """Notebook 03's order, which the bf16 test above proves necessary: the base is prepared before it is scored
    (or its probe logits taken), the autocast wrapper is removed right after training, and the reloaded / switched-off
    summaries are generated on the same rows in the same batch as the originals (defect 7)."""
    cells = _notebook_03_code()
    prepared = _first(cells, "model = prepare_4bit_base(model)")
    assert prepared <= _first(cells, 'predictions = {"base": summarise(model)}')
    assert prepared < _first(cells, "base_logits = model(**probe).logits")
    train = cells[_first(cells, "trainer.train()")]
    assert train.index("trainer.train()") < train.index("model = drop_mixed_precision_wrapper(trainer)")
    reload = cells[_first(cells, 'model.load_adapter(adapter_dir, adapter_name="reloaded")')]
    assert "n_same = min(8, len(eval_df))" in reload and "batch_size=8" in cells[_first(cells, "def summarise(")]
    assert reload.count("summarise(model, n_same)") == 2 and "generate_summaries(" not in reload
    checks = cells[_first(cells, "reloaded adapter: summaries identical")]
    assert 'predictions["qlora"][:n_same]' in checks and 'predictions["base"][:n_same]' in checks
    for fragment in ("base_logits = model(**probe).logits", "reloaded_logits = model(**probe).logits"):
        assert fragment + ".cpu()" in "\n".join(cells), f"{fragment}: probe logits must be moved to the CPU"


def test_notebook_03_says_where_to_run_the_finetune_commands():
    """The notebook runs in notebooks/; `python -m scripts.finetune` needs the course root (defect 8)."""
    import nbformat
    from utils.paths import ROOT
    nb = nbformat.read(ROOT / "notebooks" / "03_qlora_llama32_dialogsum.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "python -m scripts.finetune --config" in cell.source:
            assert "course root" in cell.source and "%cd /content/course" in cell.source
            assert cell.source.index("cd ..") < cell.source.index("python -m scripts.finetune --config")
            break
    else:
        pytest.fail("notebook 03 no longer shows the finetune commands: update this test")


ONE_EXAMPLE_STEPS = types.SimpleNamespace(epochs=1, batch_size=1, grad_accum=1, lr=1e-3)   # sizes for the Trainer tests

def test_training_stops_at_the_first_nan_loss_with_what_to_change(tmp_path, capsys):
    """A loss that turns NaN at step 3 (as an fp16 overflow does): the Trainer, with the course's arguments, logs it as
    it is, and loss_printer stops training there with the advice; steps 1 and 2 were printed normally."""
    from transformers import Trainer

    from overflow_stand_in import OverflowsAtStep3

    from utils.qlora import NonFiniteLossError, loss_printer, training_arguments

    sizes = ONE_EXAMPLE_STEPS
    args = training_arguments(sizes, tmp_path, torch.float32, activation_checkpointing=False, use_cpu=True)
    data = [{"input_ids": torch.tensor([1.0]), "labels": torch.tensor([2.0])} for _ in range(6)]
    trainer = Trainer(model=OverflowsAtStep3(), args=args, train_dataset=data, callbacks=[loss_printer(every=1)])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(fp32\).*COURSE_OVERRIDE=qlora.lr"):
        trainer.train()
    printed = capsys.readouterr().out
    assert "step    1/6" in printed and "step    2/6" in printed and "step    3/6" not in printed


def test_training_stays_on_the_cpu_where_bitsandbytes_keeps_the_4bit_model(monkeypatch, tmp_path):
    """Without CUDA the Trainer runs on the CPU, even where Apple's mps exists: it would pick mps by itself and send
    the batches there, while the 4-bit model stays on the CPU (a device mismatch at the first step on a Mac)."""
    import transformers.training_args as targs

    from utils.qlora import training_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(targs, "is_torch_mps_available", lambda *a, **k: True, raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    sizes = ONE_EXAMPLE_STEPS
    args = training_arguments(sizes, tmp_path, torch.float32)
    assert args.use_cpu and args.device.type == "cpu"
    assert training_arguments(sizes, tmp_path, torch.float32, use_cpu=False).device.type == "mps"   # what it guards


def test_the_old_checkpointing_names_are_refused_not_ignored(tmp_path):
    """transformers 5.23 ignores gradient_checkpointing(_kwargs) beside the activation_checkpointing names the course
    sets: an override under the old name would silently change nothing, so it is refused with the name to use."""
    from utils.qlora import training_arguments

    for old in ({"gradient_checkpointing": False}, {"gradient_checkpointing_kwargs": {"use_reentrant": True}}):
        with pytest.raises(TypeError, match="pass activation_checkpointing"):
            training_arguments(ONE_EXAMPLE_STEPS, tmp_path, torch.float32, **old)
    assert not training_arguments(ONE_EXAMPLE_STEPS, tmp_path, torch.float32, activation_checkpointing=False,
                                  use_cpu=True).activation_checkpointing


def test_a_template_without_an_end_of_turn_token_gets_eos(tok):
    """A chat template that closes the answer with plain text (no special token) once made the example builder drop
    the whole summary looking for one, then fail with an IndexError."""
    import copy

    plain = copy.deepcopy(tok)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                           "{% if add_generation_prompt %}assistant:\n{% endif %}")
    ex = build_chat_example(plain, DIALOGUE, SUMMARY, max_length=256)
    answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]).strip() == SUMMARY


def test_a_dialogue_without_spaces_is_shortened_too(tok):
    """Shortening cut words at spaces only: a long dialogue without one (text in a script without spaces, a pasted
    URL) was refused with "the chat template alone needs ... tokens", which was not the cause."""
    from utils.prompts import chat_prompt_ids

    ids = chat_prompt_ids(tok, "#Person1#:" + "x" * 3000, max_prompt_tokens=120)
    assert len(ids) <= 120 and "#Person1#:xx" in tok.decode(ids)
