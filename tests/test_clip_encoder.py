"""The `clip` tag encoder (reference features, spec §2.2) on a tiny randomly initialised CLIP text tower.

Runs where the `clip` extra (torch + transformers) is installed. Checks that the batched, padded encoder gives the
reference's numbers: each tag tokenized alone without padding, start token dropped, mean over the rest.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from geolink_jax.osm import tag_encoders  # noqa: E402

TAGS = ["landuse:grass", "building:building", "highway:residential", "a:b", "addr street:Main Street",
        "natural:water", "golf:tee"]


def byte_alphabet():
    """The 256 printable stand-ins of byte-level BPE (GPT-2/CLIP): printable bytes map to themselves, the rest
    to code points from 256 upward."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    chars = byte_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                         bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                                         pad_token_id=len(vocab) - 1)
    torch.manual_seed(0)
    model = transformers.CLIPTextModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def reference_feature(model, tokenizer, tag):
    tok = tokenizer(tag, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tok).last_hidden_state[0]
    return hidden[1:].double().mean(0).numpy()


def test_batched_clip_features_equal_one_tag_at_a_time(tiny_clip):
    _, model, tokenizer = tiny_clip
    enc = tag_encoders.ClipEncoder(model=model, tokenizer=tokenizer, batch_size=3)
    got = enc.encode(TAGS)
    assert got.shape == (len(TAGS), 32) and enc.dim == 32
    lengths = {len(tokenizer(t)["input_ids"]) for t in TAGS}
    assert len(lengths) > 1, "tags of different token lengths exercise the padding"
    for tag, row in zip(TAGS, got):
        np.testing.assert_allclose(row, reference_feature(model, tokenizer, tag), rtol=1e-5, atol=1e-6)


def test_clip_loads_offline_from_a_local_directory(tiny_clip, monkeypatch):
    folder, model, tokenizer = tiny_clip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = tag_encoders.make_encoder(f"clip:{folder}")
    assert enc.spec == f"clip:{folder}" and enc.metadata()["dim"] == 32
    np.testing.assert_allclose(enc.encode(TAGS[:2]),
                               tag_encoders.ClipEncoder(model=model, tokenizer=tokenizer).encode(TAGS[:2]),
                               rtol=1e-6)
