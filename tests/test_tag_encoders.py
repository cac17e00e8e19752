"""Tag labels, encoders and the ln-frequency pooling of spec §2.2."""
import math

import numpy as np
import pytest

from geolink_jax.osm import tag_encoders, tags


def test_label_from_osm_tags_follows_reference_conventions():
    label = tags.label_from_osm_tags({"building": "yes", "name": "Kiasma", "name:fi": "x", "addr:street": "Main",
                                      "cuisine": "pizza;burger", "source": "survey"})
    assert label == "building:building;addr street:Main;cuisine:pizza,burger"
    assert tags.split_label(label) == ["building:building", "addr street:Main", "cuisine:pizza,burger"]
    assert tags.tag_key("addr street:Main") == "addr street"


def test_official_frequency_table():
    freq = tags.load_tag_frequency()
    assert len(freq) == 2790 and freq["highway"] == 3940545 and min(freq.values()) == 1
    assert tags.tag_weights(["highway:path", "nonexistent key:x"], freq) == [math.log(3940545), 0.0]


def test_hash_encoder_deterministic_unit_vectors():
    enc = tag_encoders.make_encoder("hash:32")
    a = enc.encode(["landuse:grass", "highway:path", "landuse:grass"])
    assert a.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0)
    np.testing.assert_array_equal(a[0], a[2])
    np.testing.assert_array_equal(a, tag_encoders.make_encoder("hash:32").encode(["landuse:grass", "highway:path",
                                                                                  "landuse:grass"]))
    assert not np.allclose(a[0], a[1])


def test_node_features_weighted_pooling():
    enc = tag_encoders.make_encoder("hash:16")
    freq = {"landuse": 100, "golf": 10, "one": 1}
    out = tag_encoders.node_features(
        ["landuse:grass;golf:tee", "one:a;unknown:b", "", "golf:tee"], enc, freq)
    e = {t: enc.encode([t])[0] for t in ("landuse:grass", "golf:tee", "one:a", "unknown:b")}
    w1, w2 = math.log(100), math.log(10)
    np.testing.assert_allclose(out[0], (w1 * e["landuse:grass"] + w2 * e["golf:tee"]) / (w1 + w2), rtol=1e-6)
    np.testing.assert_allclose(out[1], (e["one:a"] + e["unknown:b"]) / 2, rtol=1e-6)  # all weights 0 → mean
    np.testing.assert_array_equal(out[2], 0)
    np.testing.assert_allclose(out[3], e["golf:tee"], rtol=1e-6)
    assert out.dtype == np.float32


def test_e5_encoder_offline_semantic():
    enc = tag_encoders.make_encoder("e5")
    v = enc.encode(["building:house", "building:residential", "waterway:river"])
    assert v.shape == (3, 384) and enc.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_unknown_encoder_and_missing_clip_weights_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown tag encoder"):
        tag_encoders.make_encoder("word2vec")
    monkeypatch.delenv("GEOLINK_CLIP_PATH", raising=False)
    with pytest.raises(ValueError, match="local model directory"):
        tag_encoders.make_encoder("clip")
