import torch
from transformers import GPT2Config, GPT2LMHeadModel

from utils.gpt2 import GPT2_124M, GPTConfig, GPTModel, load_hf_gpt2_state_dict


def test_exact_124m_count_with_untied_head():
    with torch.device("meta"):
        model = GPTModel(GPT2_124M)
    assert sum(p.numel() for p in model.parameters()) == 163_037_184
    linears = [m for m in model.trf_blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 72
    assert sum(m.in_features + m.out_features for m in linears) == 165_888


def test_weight_mapping_matches_transformers_gpt2():
    """The real path's loader, proven offline: the same random weights in transformers' GPT-2 and in
    ours give the same logits."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=32, bos_token_id=0,
                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg).eval()
    ours = GPTModel(GPTConfig(vocab_size=97, context_length=32, emb_dim=64, n_heads=4, n_layers=2)).eval()
    load_hf_gpt2_state_dict(ours, hf.state_dict())
    x = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, ours(x), atol=1e-5)


def test_hub_file_layout_without_prefix_also_loads():
    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    sd = {k.removeprefix("transformer."): v for k, v in GPT2LMHeadModel(cfg).state_dict().items()
          if k != "lm_head.weight"}                     # the hub's model.safetensors has no lm_head
    hf = GPT2LMHeadModel(cfg).eval()
    hf.transformer.load_state_dict(sd)                 # the same weights, for a reference output
    ours = load_hf_gpt2_state_dict(GPTModel(GPTConfig(50, 16, 32, 2, 1)), sd).eval()
    assert torch.equal(ours.out_head.weight, ours.tok_emb.weight) and torch.equal(ours.tok_emb.weight, sd["wte.weight"])
    x = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, ours(x), atol=1e-5)


def test_too_long_input_is_refused():
    model = GPTModel(GPTConfig(vocab_size=10, context_length=4, emb_dim=8, n_heads=2, n_layers=1))
    try:
        model(torch.zeros(1, 5, dtype=torch.long))
    except ValueError as e:
        assert "longer than the context" in str(e)
    else:
        raise AssertionError("expected a ValueError")
