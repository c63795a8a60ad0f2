"""A simulated Hugging Face Hub, built offline: the real ids resolve, from a local cache, to stand-ins.

What it builds (once per builder version, under ``.cache/simhub/<hash>``):

* ``hub/``: a Hugging Face hub cache (``HF_HUB_CACHE``) in the library's own layout
  (``models--org--name/refs/main`` naming a commit, ``snapshots/<commit>/<files>``, ``blobs/``), so that with
  ``HF_HUB_OFFLINE=1`` ``from_pretrained("openai-community/gpt2")`` and ``hf_hub_download(...)`` resolve from it.
  Each stand-in keeps the real model's family, classes and module names with random weights, shrunk (2 layers,
  tiny widths) so that a training step takes a fraction of a second. GPT-2 alone keeps its 124M shape: the
  course loads its weights into a from-scratch GPT-2 124M. Tokenizers are written here by the course (byte-level
  BPE / Unigram trained on the course's own texts), with the special tokens and behaviour the code depends on.
* ``datasets/``: ``knkarthick/dialogsum`` as ``datasets`` caches it (``HF_DATASETS_CACHE``; offline,
  ``load_dataset`` reads only this cache), prepared by ``datasets``' own CSV builder from the hub layout
  (``train.csv``, ``validation.csv``, ``test.csv``: id, dialogue, summary, topic; each test dialogue three times,
  ids ``test_N_1..3``), which is also in ``hub/datasets--knkarthick--dialogsum``.
* ``sms/smsspamcollection.zip``: the UCI archive's layout (``SMSSpamCollection`` and ``readme``), served over
  HTTP on 127.0.0.1 by :func:`serve`; and ``ucirvine/sms_spam``, the same messages as the hub's parquet converter
  exports them (``plain_text/train/0000.parquet`` at the revision ``refs/convert/parquet``), which the course reads
  when UCI cannot be reached.

Every text comes from ``data/`` (written by the course). Nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import http.server
import io
import json
import os
import shutil
import threading
import zipfile
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
CACHE = ROOT / ".cache" / "simhub"
SEED = 1234

GPT2 = "openai-community/gpt2"
FLAN_T5 = "google/flan-t5-base"
LLAMA = "meta-llama/Llama-3.2-3B-Instruct"
QWEN = "Qwen/Qwen2.5-3B-Instruct"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
DIALOGSUM = "knkarthick/dialogsum"
MODELS = (GPT2, FLAN_T5, LLAMA, QWEN, SMOLLM2)
SMS_ZIP = "smsspamcollection.zip"

# A small vocabulary: enough merges that the course's texts become words, not bytes.
BPE_VOCAB = 1200
UNIGRAM_VOCAB = 1000

# The real Llama 3.2 Instruct chat template (tool calling left out: the course never passes tools).
LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")

# ChatML, as Qwen2.5 writes it (its default system prompt) and as SmolLM2 writes it (its own).
def _chatml(default_system: str) -> str:
    return ("{%- if messages[0]['role'] == 'system' %}"
            "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
            "{%- else %}"
            "{{- '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}"
            "{%- endif %}"
            "{%- for message in messages %}"
            "{%- if not (message.role == 'system' and loop.first) %}"
            "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
            "{%- endif %}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


QWEN_TEMPLATE = _chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
SMOLLM2_TEMPLATE = _chatml("You are a helpful AI assistant named SmolLM, trained by Hugging Face")


def builder_hash() -> str:
    """Changes when this builder or the course's data change: the cache is rebuilt then."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for p in sorted(DATA.rglob("*")):
        if p.is_file() and p.suffix != ".md":
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- course texts

def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / "dialogsum" / name).read_text().splitlines() if line.strip()]


def corpus() -> list[str]:
    texts = []
    for name in ("dialogsum.train.jsonl", "dialogsum.dev.jsonl", "dialogsum.test.jsonl"):
        for r in _jsonl(name):
            texts += [v for k, v in r.items() if k.startswith(("dialogue", "summary")) and v]
    texts += [line.split("\t", 1)[1] for line in (DATA / "SMSSpamCollection").read_text().splitlines() if "\t" in line]
    texts += ["Summarize the following dialogue.", "Summarize this dialogue:", "Summary:", "system", "user",
              "assistant", "You are a helpful assistant.", "Cutting Knowledge Date: December 2023", "Today Date:"]
    return texts


# ----------------------------------------------------------------------------- tokenizers

def _byte_level_bpe(vocab_size: int, leading_specials: list[str]):
    """A byte-level BPE (GPT-2's scheme: no prefix space, bytes as visible characters) trained on the
    course's texts. ``leading_specials`` get ids 0, 1, ... (SmolLM2's layout)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=leading_specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return tok


def _append_specials(tok, specials: list[str]):
    """Special tokens after the learned vocabulary (GPT-2's <|endoftext|>, Llama 3's and Qwen's), in the
    model's vocabulary as the real files have them, and registered as added special tokens."""
    from tokenizers import AddedToken, Tokenizer

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for s in specials:
        if s not in vocab:
            vocab[s] = len(vocab)
    out = Tokenizer.from_str(json.dumps(data))
    out.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return out


def _save_tokenizer(backend, folder: Path, cls, **kwargs):
    """Wrap a ``tokenizers`` backend in the transformers class the real repository names and save it
    (tokenizer.json, tokenizer_config.json, and the class's own files)."""
    tok = cls(tokenizer_object=backend, **kwargs) if cls.__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend") \
        else _via_file(cls, backend, folder, **kwargs)
    tok.save_pretrained(folder)
    return tok


def _via_file(cls, backend, folder: Path, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    backend.save(str(path))
    return cls.from_pretrained(str(folder), **kwargs)


def gpt2_tokenizer(folder: Path):
    from transformers import GPT2Tokenizer

    backend = _append_specials(_byte_level_bpe(BPE_VOCAB, []), ["<|endoftext|>"])
    return _save_tokenizer(backend, folder, GPT2Tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                           unk_token="<|endoftext|>", model_max_length=1024)


def llama3_tokenizer(folder: Path):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    backend = _append_specials(_byte_level_bpe(BPE_VOCAB, []), specials)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    return _save_tokenizer(backend, folder, PreTrainedTokenizerFast, bos_token="<|begin_of_text|>",
                           eos_token="<|eot_id|>", model_max_length=131072, chat_template=LLAMA3_TEMPLATE,
                           model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=True)


def qwen2_tokenizer(folder: Path):
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = _append_specials(_byte_level_bpe(BPE_VOCAB, []), specials)
    return _save_tokenizer(backend, folder, Qwen2Tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                           bos_token=None, unk_token=None, model_max_length=131072, chat_template=QWEN_TEMPLATE,
                           errors="replace", split_special_tokens=False)


def smollm2_tokenizer(folder: Path):
    from transformers import GPT2Tokenizer

    backend = _byte_level_bpe(BPE_VOCAB, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return _save_tokenizer(backend, folder, GPT2Tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                           pad_token="<|im_end|>", unk_token="<|endoftext|>", model_max_length=8192,
                           chat_template=SMOLLM2_TEMPLATE)


def t5_tokenizer(folder: Path):
    """T5's layout: a SentencePiece-style Unigram with <pad> = 0, </s> = 1, <unk> = 2, then the pieces,
    then the 100 sentinels <extra_id_99> ... <extra_id_0>; T5Tokenizer appends </s> to every sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    trainer = trainers.UnigramTrainer(vocab_size=UNIGRAM_VOCAB, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    backend.train_from_iterator(corpus(), trainer)
    data = json.loads(backend.to_str())
    data["model"]["vocab"] += [[f"<extra_id_{i}>", 0.0] for i in range(99, -1, -1)]
    data["model"]["unk_id"] = 2
    return _save_tokenizer(Tokenizer.from_str(json.dumps(data)), folder, T5Tokenizer, extra_ids=100,
                           model_max_length=512)


# ----------------------------------------------------------------------------- models

def _tiny(**kw) -> dict:
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, **kw)


def _save_model(model, folder: Path, dtype=None):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)


def _seeded():
    import torch

    torch.manual_seed(SEED)


def build_gpt2(folder: Path):
    """OpenAI's file layout (keys without the 'transformer.' prefix, fp32, head tied to wte) at the 124M shape."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config

    tok = gpt2_tokenizer(folder)
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        architectures=["GPT2LMHeadModel"])
    assert len(tok) <= config.vocab_size
    config.save_pretrained(folder)
    g = torch.Generator().manual_seed(SEED)
    d, sd = 768, {}

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    sd["wte.weight"], sd["wpe.weight"] = normal(50257, d), normal(1024, d, std=0.01)
    for i in range(12):
        p = f"h.{i}."
        sd |= {p + "ln_1.weight": torch.ones(d), p + "ln_1.bias": torch.zeros(d),
               p + "attn.c_attn.weight": normal(d, 3 * d), p + "attn.c_attn.bias": torch.zeros(3 * d),
               p + "attn.c_proj.weight": normal(d, d), p + "attn.c_proj.bias": torch.zeros(d),
               p + "ln_2.weight": torch.ones(d), p + "ln_2.bias": torch.zeros(d),
               p + "mlp.c_fc.weight": normal(d, 4 * d), p + "mlp.c_fc.bias": torch.zeros(4 * d),
               p + "mlp.c_proj.weight": normal(4 * d, d), p + "mlp.c_proj.bias": torch.zeros(d)}
    sd |= {"ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d)}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}, indent=2))


def build_flan_t5(folder: Path):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = t5_tokenizer(folder)
    vocab = -(-len(tok) // 128) * 128          # flan-t5 pads its embedding past the tokenizer (32,128 for 32,100)
    config = T5Config(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2, vocab_size=vocab,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      architectures=["T5ForConditionalGeneration"])
    _seeded()
    model = T5ForConditionalGeneration(config)
    if model.lm_head.weight is model.shared.weight:        # transformers 5 ties T5 by default: untie like flan-t5
        model.lm_head = torch.nn.Linear(64, vocab, bias=False)
        torch.nn.init.normal_(model.lm_head.weight, std=64 ** -0.5)
        getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    _save_model(model, folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, indent=2))


def _build_causal(folder: Path, tok, config_cls, model_cls, generation: dict, **config_kw):
    import torch

    config = config_cls(**_tiny(vocab_size=len(tok), tie_word_embeddings=True, **config_kw),
                        architectures=[model_cls.__name__])
    _seeded()
    model = model_cls(config)
    _save_model(model, folder, torch.bfloat16)
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))


def build_llama(folder: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = llama3_tokenizer(folder)
    eos = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    _build_causal(folder, tok, LlamaConfig, LlamaForCausalLM,
                  {"bos_token_id": tok.bos_token_id, "eos_token_id": eos, "do_sample": True, "temperature": 0.6,
                   "top_p": 0.9},
                  head_dim=16, bos_token_id=tok.bos_token_id, eos_token_id=eos, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, rope_theta=500000.0, mlp_bias=False, attention_bias=False, hidden_act="silu",
                  rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"})


def build_qwen(folder: Path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen2_tokenizer(folder)
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    _build_causal(folder, tok, Qwen2Config, Qwen2ForCausalLM,
                  {"bos_token_id": pad, "eos_token_id": [eos, pad], "pad_token_id": pad, "do_sample": True,
                   "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
                  bos_token_id=pad, eos_token_id=eos, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, hidden_act="silu", use_sliding_window=False)


def build_smollm2(folder: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer(folder)
    _build_causal(folder, tok, LlamaConfig, LlamaForCausalLM,
                  {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                   "pad_token_id": tok.pad_token_id},
                  head_dim=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, max_position_embeddings=8192, rms_norm_eps=1e-5,
                  rope_theta=100000.0, hidden_act="silu")


BUILDERS = {GPT2: build_gpt2, FLAN_T5: build_flan_t5, LLAMA: build_llama, QWEN: build_qwen, SMOLLM2: build_smollm2}


# ----------------------------------------------------------------------------- hub cache layout

def _commit(files: dict[str, Path]) -> str:
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode())
        h.update(files[name].read_bytes())
    return h.hexdigest()


def to_hub_cache(hub: Path, repo_id: str, folder: Path, repo_type: str = "model", revision: str = "main") -> str:
    """Move the files of ``folder`` into the hub cache as huggingface_hub writes them: content-addressed
    blobs, a snapshot of symlinks named by the commit, and refs/<revision> holding that commit."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    commit = _commit(files)
    repo = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.move(str(path), blob)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    (repo / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


# ----------------------------------------------------------------------------- data

def dialogsum_csvs(folder: Path) -> None:
    """The hub's DialogSum export: id, dialogue, summary, topic; the test split once per reference."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": "dialogsum.train.jsonl", "validation": "dialogsum.dev.jsonl", "test": "dialogsum.test.jsonl"}
    for split, name in splits.items():
        rows = []
        for r in _jsonl(name):
            if split == "test":
                rows += [(f"{r['fname']}_{k}", r["dialogue"], r[f"summary{k}"], r[f"topic{k}"]) for k in (1, 2, 3)]
            else:
                rows.append((r["fname"], r["dialogue"], r["summary"], r["topic"]))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "dialogue", "summary", "topic"])
        w.writerows(rows)
        (folder / f"{split}.csv").write_text(buf.getvalue())
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-sa-4.0\nlanguage:\n- en\n---\n# DialogSum "
                                      "(simulated by the course: dialogues written by the course)\n")


def datasets_cache(cache_dir: Path, csv_folder: Path, commit: str) -> None:
    """What ``load_dataset("knkarthick/dialogsum")`` leaves in ``HF_DATASETS_CACHE`` after a first online run:
    prepared by the same packaged CSV builder, under the repository's name, config 'default'."""
    from datasets.packaged_modules.csv.csv import Csv

    files = {s: [str(csv_folder / f"{s}.csv")] for s in ("train", "validation", "test")}
    work = cache_dir.with_name(cache_dir.name + ".work")
    builder = Csv(cache_dir=str(work), dataset_name="dialogsum", config_name="default", hash=commit, data_files=files)
    builder.download_and_prepare()
    target = cache_dir / DIALOGSUM.replace("/", "___") / "default" / "0.0.0" / commit
    target.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, target)
    shutil.rmtree(work)


SMS_HUB = "ucirvine/sms_spam"


def write_sms_parquet(path: Path, lines: list[str]) -> Path:
    """The hub's parquet export of SMS lines (``label<TAB>text``): one row per line, in order; ``sms`` the text as
    the dataset's loading script yielded it (with the line break), ``label`` 0 for ham, 1 for spam."""
    import pandas as pd

    rows = [line.split("\t", 1) for line in lines if line.strip()]
    pd.DataFrame({"sms": [t + "\n" for _, t in rows], "label": [int(lab == "spam") for lab, _ in rows]}).to_parquet(path)
    return path


def sms_parquet(folder: Path) -> None:
    """``ucirvine/sms_spam``'s export of the course's SMS file, where the hub keeps it."""
    (folder / "plain_text" / "train").mkdir(parents=True)
    write_sms_parquet(folder / "plain_text" / "train" / "0000.parquet",
                      (DATA / "SMSSpamCollection").read_text().splitlines())


def sms_zip(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SMS_ZIP
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("SMSSpamCollection", (DATA / "SMSSpamCollection").read_text())
        z.writestr("readme", "SMS Spam Collection (simulated by the course: messages written by the course)\n")
    return path


# ----------------------------------------------------------------------------- entry points

def build(cache: Path = CACHE) -> Path:
    """The simulated hub's folder, built on first use (atomically) and reused while the builder is unchanged."""
    final = cache / builder_hash()
    if (final / "DONE").exists():
        return final
    tmp = cache / f"{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hub = tmp / "hub"
    for repo_id, make in BUILDERS.items():
        staging = tmp / "staging" / repo_id.replace("/", "--")
        staging.mkdir(parents=True)
        make(staging)
        to_hub_cache(hub, repo_id, staging)
    staging = tmp / "staging" / "dialogsum"
    dialogsum_csvs(staging)
    csv_copy = tmp / "csv"
    shutil.copytree(staging, csv_copy)
    commit = to_hub_cache(hub, DIALOGSUM, staging, repo_type="dataset")
    datasets_cache(tmp / "datasets", csv_copy, commit)
    sms_zip(tmp / "sms")
    staging = tmp / "staging" / "sms_spam"
    sms_parquet(staging)
    to_hub_cache(hub, SMS_HUB, staging, repo_type="dataset", revision="refs/convert/parquet")
    shutil.rmtree(tmp / "staging")
    (tmp / "DONE").write_text(json.dumps({"models": list(MODELS), "dataset": DIALOGSUM}))
    if final.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    for old in cache.iterdir():                     # earlier builds of an older builder
        if old.is_dir() and old != final and not old.name.startswith(f"{final.name}.tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def environment(root: Path, sms_url: str | None = None) -> dict[str, str]:
    """Variables that point the libraries at the simulated hub (nothing else may be reached)."""
    env = {"HF_HUB_CACHE": str(root / "hub"), "HF_DATASETS_CACHE": str(root / "datasets"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if sms_url:
        env["COURSE_SMS_URL"] = sms_url
    return env


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(root: Path):
    """An HTTP server on 127.0.0.1 (a free port) serving ``root/sms``; yields the zip's URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root / "sms")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{SMS_ZIP}"
    finally:
        server.shutdown()
        server.server_close()
