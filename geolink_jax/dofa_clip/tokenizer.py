"""Text → token ids for the text tower: CLIP's byte-level BPE (the vocabulary file open_clip ships; a copy is
bundled) or a SigLIP SentencePiece model from a local path. Both return int32 [N, context_length].

- `ClipBPETokenizer`: open_clip's `SimpleTokenizer` ("lower" cleaning): HTML unescaped, whitespace collapsed,
  lower case; CLIP's regex split; byte-level BPE with `</w>` word ends (run by the `tokenizers` library);
  [<start_of_text>, …, <end_of_text>] truncated to the context with <end_of_text> kept last, padded with 0.
- `SentencePieceTokenizer`: open_clip's HFTokenizer for SigLIP ("canonicalize" cleaning: `_` → space, punctuation
  removed, lower case); the model's pieces truncated to context − 1, then </s>; padded with the model's pad id
  (</s> where it has none, as SigLIP's tokenizer).
"""

import gzip
import html
import importlib.util
import pathlib
import re
import string

import numpy as np

BUNDLED_BPE = pathlib.Path(__file__).resolve().parent.parent / "sample_data" / "dofa_clip" / \
    "bpe_simple_vocab_16e6.txt.gz"
CLIP_SPLIT = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _fix_text(text):
    if importlib.util.find_spec("ftfy") is not None:  # open_clip's mojibake repair, when installed
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def canonicalize(text):
    """big_vision's prompt canonicalisation (SigLIP): `_` → space, punctuation removed, lower case, one space."""
    text = _fix_text(text).replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split())


def _bytes_to_unicode():
    """CLIP's reversible byte → printable-character table (the vocabulary's first 256 symbols)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ClipBPETokenizer:
    sot, eot, pad = 49406, 49407, 0
    vocab_size = 49408

    def __init__(self, bpe_path=None, context_length=77):
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        path = pathlib.Path(bpe_path or BUNDLED_BPE)
        merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>",
                                                                                      "<end_of_text>"]
        if len(vocab) != self.vocab_size:
            raise ValueError(f"{path}: not CLIP's BPE vocabulary ({len(vocab)} symbols, expected {self.vocab_size})")
        bpe = models.BPE(vocab=dict(zip(vocab, range(len(vocab)))), merges=merges, continuing_subword_prefix="",
                         end_of_word_suffix="</w>", fuse_unk=False)
        self._tok = Tokenizer(bpe)
        self._symbols = vocab
        self._bytes = {c: b for b, c in _bytes_to_unicode().items()}
        self._tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self.context_length = context_length

    def encode(self, text):
        return self._tok.encode(" ".join(_fix_text(text).split()).lower(), add_special_tokens=False).ids

    def decode(self, ids):
        """Token ids → text (open_clip's `decode`), the special tokens and the 0 padding left out (id 0 is also "!",
        which this drops: for display)."""
        text = "".join(self._symbols[i] for i in ids if 0 < i < self.sot).replace("</w>", " ")
        return bytes(self._bytes.get(c, 32) for c in text).decode("utf-8", "replace").strip()

    def __call__(self, texts):
        out = np.full((len(texts), self.context_length), self.pad, np.int32)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][:self.context_length]
            ids[-1] = self.eot
            out[i, :len(ids)] = ids
        return out


class SentencePieceTokenizer:
    def __init__(self, model_path, context_length=64):
        if importlib.util.find_spec("sentencepiece") is None:
            raise ImportError("a SentencePiece tokenizer needs the sentencepiece package (pip install sentencepiece)")
        import sentencepiece

        path = pathlib.Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no SentencePiece model there")
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self._sp.get_piece_size()
        self.eos = self._sp.eos_id()
        self.pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos
        self.context_length = context_length

    def encode(self, text):
        return self._sp.encode(canonicalize(text))

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids if i not in (self.pad, self.eos)])

    def __call__(self, texts):
        out = np.full((len(texts), self.context_length), self.pad, np.int32)
        for i, text in enumerate(texts):
            ids = [*self.encode(text)[:self.context_length - 1], self.eos]  # truncated, </s> kept last (HF)
            out[i, :len(ids)] = ids
        return out


def display_text(text):
    """Decoded text for a person: CLIP BPE decodes punctuation as words of their own (`craft ( printer ) , red`);
    the spaces inside brackets and before closing punctuation go (`craft (printer), red`)."""
    text = re.sub(r"([(\[{])\s+", r"\1", text)
    text = re.sub(r"\s+([)\]},.;:!?%])", r"\1", text)
    return re.sub(r"\s+([-/'])\s+", r"\1", text).strip()


def make_tokenizer(spec, context_length):
    """"clip_bpe" (the bundled vocabulary), "clip_bpe:<path>" or "sentencepiece:<path to .model>"."""
    kind, _, path = spec.partition(":")
    if kind == "clip_bpe":
        return ClipBPETokenizer(path or None, context_length)
    from geolink_jax.config import ConfigError

    if kind == "sentencepiece":
        if not path:
            raise ConfigError(f"model.tokenizer {spec!r} names no model file: set --config.model.tokenizer="
                              "sentencepiece:<path to SigLIP's spiece.model> (or clip_bpe with text.vocab_size 49408)")
        return SentencePieceTokenizer(path, context_length)

    raise ConfigError(f"model.tokenizer {spec!r}: 'clip_bpe', 'clip_bpe:<path>' or 'sentencepiece:<path>'")
