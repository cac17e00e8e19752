"""Model config dataclasses ↔ plain dicts (JSON, ml_collections): the form configs are stored and read in."""

import dataclasses
import typing


def config_to_dict(cfg):
    """A (nested) config dataclass → plain dict of JSON-able values (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def config_from_dict(cls, d, where="model"):
    """Plain mapping → config dataclass `cls`, recursing into nested dataclass fields and turning lists into tuples
    for tuple fields. A key that is not a field is a ValueError naming it and listing the valid fields."""
    d = dict(d)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} of {cls.__name__}; valid "
                         f"fields: {', '.join(names)}")
    out = {}
    for k, v in d.items():
        t = hints[k]
        if dataclasses.is_dataclass(t) and not isinstance(v, t):
            v = config_from_dict(t, v, f"{where}.{k}")
        elif typing.get_origin(t) is tuple or t is tuple:
            v = tuple(v)
        out[k] = v
    return cls(**out)
