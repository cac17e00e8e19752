"""The recipe card of a run config: what a run will do, in the recipe's own unit, beside the values of the run it
reproduces (`config.reference`: its source, file and line, its values and our named deviations from them).

    rows = card(config, num_examples)   # [(field, ours, reference)]
    print(format_card(config, rows))    # what `geolink-jax pretrain --dry-run` prints

The values are strings in one format, so that the README "Recipes" table, the card and `config.reference` compare
as text (tests/test_recipes.py checks each named pod config against the table and against its reference).
"""

import math

from geolink_jax import config as config_lib
from geolink_jax import family as family_lib


def _number(x):
    """840 → "840"; 24576 → "24,576"; 0.05 → "0.05"; 1.44e-4 → "1.44e-4"; 1e-08 → "1e-8" (3 significant digits)."""
    x = float(x)
    if x == int(x) and abs(x) >= 1:
        return f"{int(x):,}"
    if x == 0 or 0.01 <= abs(x) < 1e4:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def ours(config, num_examples=None):
    """{field: value string} of the final config (overrides applied). Steps and updates appear when the data size is
    known (epochs over data.num_examples or `num_examples`, or total_steps)."""
    fam = family_lib.get_family(config.family)
    model_cfg = family_lib.model_config(fam, config)
    o = config.optim
    lr, effective, unit = config_lib.learning_rate(config)
    acc = max(int(o.get("accumulate", 1)), 1)
    out = {
        "unit": unit,
        "records per step": _number(config.batch_size),
        "accumulate": _number(acc),
        "effective batch": f"{_number(effective)} {unit}",
        "peak lr": _number(lr),
        "lr rule": (f"{_number(o.lr)} × effective batch / {_number(o.lr_base_batch)}" if o.get("lr_base_batch", 0)
                    else "fixed"),
        "end lr": _number(lr * o.get("end_lr_factor", 0.0)) if o.get("end_lr_factor", 0.0) else "0",
        "schedule": "linear warm-up, then cosine per optimizer update",
        "clipping": f"global norm {_number(o.clip_norm)}" if o.clip_norm else "none",
        "optimiser": (f"AdamW β = ({_number(o.b1)}, {_number(o.b2)}), eps {_number(o.get('eps', 1e-8))}, "
                      f"weight decay {_number(o.weight_decay)}"),
    }
    epochs = float(config.get("epochs", 0) or 0)
    if o.get("warmup_fraction", 0):
        out["warm-up"] = (f"{_number(o.warmup_fraction * epochs)} of {_number(epochs)} epochs" if epochs
                          else f"{o.warmup_fraction:.4g} of the steps")
    else:
        out["warm-up"] = f"{_number(o.warmup_steps)} steps"
    out["length"] = f"{_number(epochs)} epochs" if epochs else f"{_number(config.total_steps)} steps"
    try:
        d = config_lib.derive(config, num_examples)
        out["steps"] = (f"{_number(d.total_steps)} steps = {_number(math.ceil(d.total_steps / acc))} updates, "
                        f"{_number(d.warmup_steps // acc)} of them warm-up")
    except ValueError:
        out["steps"] = "set by the data (epochs × records / batch)"
    inits = {k: v for k, v in _flat(config.model.to_dict()).items() if k.split(".")[0].endswith("_init") and v}
    out["initialisation"] = (", ".join(f"{k}={v!r}" for k, v in inits.items()) + f"; the rest random (seed "
                             f"{config.seed})") if inits else f"random (seed {config.seed})"
    if fam.recipe_notes is not None:
        out.update(fam.recipe_notes(model_cfg, config))
    return out


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def card(config, num_examples=None):
    """[(field, ours, reference or "")] with the reference's fields that ours lacks at the end."""
    mine = ours(config, num_examples)
    ref = dict(config.get("reference", {}).get("values", {}) or {})
    return [(k, v, str(ref.get(k, ""))) for k, v in mine.items()] + [(k, "", str(v)) for k, v in ref.items()
                                                                        if k not in mine]


def deviations(config, rows):
    """{field: (ours, reference)} of the card's rows where ours differs from the reference and the config names no
    deviation for it."""
    named = dict(config.get("reference", {}).get("deviations", {}) or {})
    return {k: (o, r) for k, o, r in rows if r and o != r and k not in named}


def format_card(config, rows, column=48):
    import textwrap

    ref = config.get("reference", {}) or {}
    width = max(len(k) for k, _, _ in rows)
    lines = [f"recipe card: family {config.family}; reference run: {ref.get('name', '') or 'none named'}",
             f"{'':{width}}  {'ours':{column}}  reference"]
    for k, o, r in rows:  # long values wrap within their column
        left, right = textwrap.wrap(o, column) or [""], textwrap.wrap(r, column) or [""]
        for i in range(max(len(left), len(right))):
            a, b = (left[i] if i < len(left) else ""), (right[i] if i < len(right) else "")
            lines.append(f"{k if i == 0 else '':{width}}  {a:{column}}  {b}".rstrip())
    if ref.get("source"):
        lines.append(f"reference: {ref['source']}")
    for k, why in dict(ref.get("deviations", {}) or {}).items():
        lines.append(f"deviation, {k}: {why}")
    undocumented = deviations(config, rows)
    for k, (o, r) in undocumented.items():
        lines.append(f"WARNING: {k} is {o}, the reference's {r}, and the config names no reason")
    return "\n".join(lines)
