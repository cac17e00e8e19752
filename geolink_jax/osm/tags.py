"""OSM tag labels (`key:value;key:value`) and the reference's ln-frequency tag weighting (spec §2.1-§2.3)."""
import functools
import json
import math

from geolink_jax import samples

# Keys the reference label convention leaves out (names are absent in the examples) plus pure bookkeeping keys.
SKIPPED_KEY_PREFIXES = ("name", "old_name", "alt_name", "official_name", "short_name", "loc_name", "int_name",
                        "source", "created_by", "note", "fixme", "FIXME", "description", "wikidata",
                        "wikipedia", "website", "url", "phone", "email", "contact", "opening_hours",
                        "check_date", "survey")


def split_label(label):
    """'landuse:grass;golf:tee' → ['landuse:grass', 'golf:tee'] (empty parts dropped)."""
    if label is None:
        return []
    return [t.strip() for t in str(label).split(";") if t.strip()]


def tag_key(tag):
    """The weight lookup key: text before the first ':' (spec §2.2)."""
    return tag.split(":", 1)[0]


def _skipped(key):
    return any(key == p or key.startswith(p + ":") or key.startswith(p + "_") for p in SKIPPED_KEY_PREFIXES)


def label_from_osm_tags(tags):
    """Raw OSM tags (mapping) → the reference label string.

    Conventions of the released data (spec §2.1): a `yes` value becomes the key (`building:building`),
    names are dropped, namespace colons in keys become spaces (`addr:street` → `addr street`). A `;` inside
    a value (OSM multi-value) would split the tag, so it becomes `,`.
    """
    parts = []
    for key, value in tags.items():
        key, value = str(key), str(value)
        if not key or _skipped(key):
            continue
        if value == "yes":
            value = key
        parts.append(f"{key.replace(':', ' ')}:{value.replace(';', ',')}")
    return ";".join(parts)


@functools.lru_cache(maxsize=8)
def load_tag_frequency(path=None):
    """Tag-key → occurrence count table; defaults to the official one bundled with the package."""
    with open(path or samples.TAG_FREQUENCY_PATH) as f:
        return json.load(f)


def tag_weights(tags, frequency):
    """α_i = ln(freq[key_i]); unknown keys count 1 (α = 0). float64 list."""
    return [math.log(frequency.get(tag_key(t), 1)) for t in tags]
