"""Chapter 1's classifier plumbing (utils/classifier.py) on the real offline backbone, SmolLM2-135M-Instruct."""
import ast
import math

import nbformat
import pandas as pd
from nbcode import code_of
import pytest
import torch
from torch import nn

from utils import planner
from utils.classifier import Backbone, accuracy, encode, last_token_logits, load_backbone, predict
from utils.gpt2 import GPTConfig, GPTModel
from utils.paths import ROOT
from utils.profiles import get_profile

MESSAGES = ["Can u grab milk on the way home?",
            "Hi Mum, this is my new number. Can u text me on WhatsApp when u get this? I need a favour, it's urgent x",
            "ok", "Your parcel is held at the depot: parcels-resched.example"]


@pytest.fixture(scope="module")
def smollm2() -> Backbone:
    return load_backbone(get_profile("smoke"))


def _close(a, b):
    """Equal up to float32 rounding: a tolerance scaled by eps and the logits' magnitude (any CPU)."""
    scale = max(a.abs().max().item(), b.abs().max().item(), 1.0)
    return (a - b).abs().max().item() <= 64 * torch.finfo(torch.float32).eps * scale


def test_backbone_is_smollm2_with_an_untied_head(smollm2):
    model = smollm2.model
    head, emb = getattr(model, smollm2.head_name), model.get_input_embeddings()
    assert smollm2.head_name == "lm_head" and isinstance(head, nn.Linear) and smollm2.pretrained
    assert head.out_features == model.config.vocab_size == 49_152 and smollm2.hidden_size == 576
    assert head.weight.data_ptr() != emb.weight.data_ptr() and torch.equal(head.weight, emb.weight)
    assert model.config.tie_word_embeddings is False
    assert smollm2.tokenizer.padding_side == "right" and smollm2.tokenizer.pad_token_id is not None


def test_last_token_logits_ignore_right_padding(smollm2):
    """A message alone and the same message padded in a batch beside longer ones: the same logits."""
    batch, last = encode(smollm2.tokenizer, MESSAGES, max_length=64)
    assert batch.shape[1] > len(smollm2.tokenizer(MESSAGES[0])["input_ids"])       # row 0 is padded
    with torch.no_grad():
        together = last_token_logits(smollm2.model, batch, last)
        for i, text in enumerate(MESSAGES):
            alone, last_alone = encode(smollm2.tokenizer, [text], max_length=64)
            assert alone.shape[1] == last[i].item() + 1
            single = last_token_logits(smollm2.model, alone, last_alone)[0]
            assert _close(single, together[i]), f"message {i}: padding changed its logits"
            assert single.argmax() == together[i].argmax()


def test_padding_would_matter_at_the_wrong_position(smollm2):
    """The check above can fail: logits at the padded end of a short row differ from its last real token."""
    batch, last = encode(smollm2.tokenizer, MESSAGES[:2], max_length=64)
    with torch.no_grad():
        logits = smollm2.model(batch).logits
    assert last[0] < batch.shape[1] - 1
    assert not _close(logits[0, last[0]], logits[0, -1])


def _notebook_definitions(*names) -> dict:
    """Notebook 01's own classes and functions ``names`` (top-level definitions of its code cells), run here: the
    test checks the code students read, not a copy of it."""
    nb = nbformat.read(ROOT / "notebooks" / "01_lora_from_scratch_gpt2.ipynb", as_version=4)
    namespace = {"torch": torch, "nn": nn, "math": math}
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        tree = ast.parse(code_of(cell.source))
        defs = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
        if defs:
            exec(compile(ast.Module(body=defs, type_ignores=[]), "notebook 01", "exec"), namespace)
    assert set(names) <= set(namespace), f"notebook 01 no longer defines {set(names) - set(namespace)}"
    return namespace


def _inject_lora_like_the_notebook(cfg, rank, skip):
    """What notebook 01's injection makes trainable on a (meta) copy of the model: its own LoRALayer, LinearWithLoRA
    and replace_linear_with_lora, after freezing every weight as the notebook does."""
    from utils.architectures import meta_model

    code = _notebook_definitions("LoRALayer", "LinearWithLoRA", "replace_linear_with_lora")
    model = meta_model(cfg)
    model.requires_grad_(False)
    code["replace_linear_with_lora"](model, rank, 2 * rank, skip=skip)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lora_r8_count_on_smollm2_equals_the_formula_and_peft(smollm2):
    from peft import LoraConfig, get_peft_model

    model, cfg = smollm2.model, smollm2.model.config
    expected = planner.lora_parameter_count(cfg, 8, planner.ALL_LINEAR)
    assert expected == 8 * 30 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)) == 2_442_240
    assert _inject_lora_like_the_notebook(cfg, 8, skip=(smollm2.head_name,)) == expected
    # the head is the only Linear outside the blocks, so skipping it leaves exactly the planner's Linears
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert [n for n in linears if not n.startswith("model.layers.")] == [smollm2.head_name]
    assert _inject_lora_like_the_notebook(cfg, 8, skip=()) == expected + 8 * (576 + 49_152)
    # an independent implementation: PEFT on the same Linears, on a meta copy (no memory)
    from utils.architectures import meta_model
    peft = get_peft_model(meta_model(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=planner.ALL_LINEAR))
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) == expected


def test_random_backbone_same_architecture_other_weights(smollm2):
    rand = load_backbone(get_profile("smoke"), pretrained=False)
    assert not rand.pretrained and "random" in rand.name
    real_params = dict(smollm2.model.named_parameters())
    assert {n: p.shape for n, p in rand.model.named_parameters()} == {n: p.shape for n, p in real_params.items()}
    w = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(rand.model.named_parameters())[w], real_params[w])


def test_predict_keeps_the_order_of_the_rows(smollm2):
    """predict() groups messages by length; its answers must still line up with the rows."""
    torch.manual_seed(0)
    model = smollm2.model
    saved = model.lm_head
    model.lm_head = nn.Linear(576, 2)
    try:
        df = pd.DataFrame({"text": MESSAGES * 2, "label": [0, 1, 0, 1, 1, 0, 1, 0]})
        preds = predict(model, df, smollm2.tokenizer, max_length=64, batch_size=3)
        with torch.no_grad():
            one_by_one = [last_token_logits(model, *encode(smollm2.tokenizer, [t], 64)).argmax(-1).item()
                          for t in df["text"]]
        assert len(set(one_by_one)) == 2           # the head tells these rows apart: a mix-up of rows would show
        assert preds.tolist() == one_by_one
        assert accuracy(model, df, smollm2.tokenizer, 64, batch_size=3) == \
            sum(p == y for p, y in zip(one_by_one, df["label"])) / len(df)
    finally:
        model.lm_head = saved


def test_from_scratch_gpt2_also_ignores_right_padding():
    """The online backbone (our GPT-2) follows the same rule; tiny random configuration, exact architecture code."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=100, context_length=32, emb_dim=32, n_heads=4, n_layers=2)).eval()
    x = torch.randint(1, 100, (2, 12))
    x[0, 5:] = 0                                              # row 0: 5 real tokens, then padding
    with torch.no_grad():
        together = last_token_logits(model, x, torch.tensor([4, 11]))
        alone = last_token_logits(model, x[:1, :5], torch.tensor([4]))
    assert _close(alone[0], together[0])


def test_encode_refuses_empty_messages_and_bad_lengths(smollm2):
    with pytest.raises(ValueError, match="max_length"):
        encode(smollm2.tokenizer, ["hi"], max_length=0)
    with pytest.raises(ValueError, match="no tokens"):
        encode(smollm2.tokenizer, ["hi", ""], max_length=8)
    x, last = encode(smollm2.tokenizer, [MESSAGES[1]], max_length=5)
    assert x.shape == (1, 5) and last.tolist() == [4]


def test_shuffled_batches_cover_every_row_once(smollm2):
    from utils.classifier import batches

    texts = [f"message {'word ' * (i % 13)}{i}" for i in range(50)]
    df = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(50)]})
    tok = smollm2.tokenizer

    def run(seed):
        out = list(batches(df, tok, 4, 64, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        rows = [int(tok.decode(x[j, :last[j] + 1]).split()[-1]) for x, last, _ in out for j in range(len(x))]
        return rows, [int(v) for _, _, y in out for v in y]

    rows, labels = run(1)
    assert sorted(rows) == list(range(50)) and labels == [r % 2 for r in rows]
    assert run(1)[0] == rows and run(2)[0] != rows                           # reproducible, seed-dependent
    plain = list(batches(df, tok, 4, 64))
    assert [int(v) for _, _, y in plain for v in y] == df["label"].tolist()  # unshuffled: the order of df


def test_shuffled_batches_mix_the_classes_when_length_follows_the_class(smollm2):
    """Spam runs longer than ham: batches grouped by length would hold one class each. A plain shuffle mixes them."""
    from utils.classifier import batches

    df = pd.DataFrame({"text": [f"{'win cash now ' * 6 if i % 2 else 'ok'} {i}" for i in range(64)],
                       "label": [i % 2 for i in range(64)]})
    for seed in range(3):
        out = list(batches(df, smollm2.tokenizer, 8, 64, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        mixed = sum(0 < int(y.sum()) < len(y) for _, _, y in out)
        assert len(out) == 8 and mixed == 8, (seed, mixed)
