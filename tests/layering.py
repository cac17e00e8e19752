"""The package's layering, read from the source (no import runs): which package imports which, and the rules they
obey. `python tests/layering.py` prints the package import graph and every violation; tests/test_layering.py
fails on any.

Rules:
- a shared package (anything under geolink_jax/ that is not a family folder) imports no family;
- a family imports no other family;
- every package imports only the shared packages `ALLOWED` lists for it (families: any shared package but the
  entry points `cli`, `bench` and `evaluate`), so model code (`nn`) imports nothing of `train`, `config` or `family`;
- no `_private` name (module, function, class, constant) is imported or reached across packages;
- no import cycle between modules (lazy imports inside functions count: they are dependencies all the same).
"""

import ast
import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "geolink_jax"
FAMILIES = ("geolink", "mae", "gair", "dofa_clip")
# shared package → the shared packages it may import (each also imports itself). A top-level module (config.py) is a
# package of its own here.
ALLOWED = {
    "samples": set(),
    "nn": set(),
    "data": set(),
    "osm": {"samples"},
    "family": {"nn"},
    "config": {"nn", "family"},
    "tiles": {"nn", "data", "osm", "samples"},
    "pictures": {"nn", "data", "tiles", "osm"},
    "train": {"nn", "data", "config", "family"},
    "convert": {"nn", "data", "osm", "train", "family"},
    "downstream": {"nn", "data", "tiles", "convert", "pictures"},
    "bench": {"samples", "nn", "data", "osm", "family", "config", "tiles", "pictures", "train", "convert",
              "downstream"},
    "evaluate": {"data", "family", "config", "train", "convert", "downstream"},
    "cli": {"samples", "nn", "data", "osm", "family", "config", "tiles", "pictures", "train", "convert", "downstream",
            "bench", "evaluate"},
}
FAMILY_MAY_IMPORT = set(ALLOWED) - {"cli", "bench", "evaluate"}


def modules(root=ROOT):
    """{dotted module name: path} of every module of the package (sample data scripts left out)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if "sample_data" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def package_of(module):
    """geolink_jax.tiles.job → 'tiles'; geolink_jax.config → 'config'; geolink_jax → '<root>'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def imports(name, path, mods):
    """[(imported module, imported name or None, line)] of one module, every import statement, lazy ones too; a
    `from pkg import sub` of a submodule resolves to the submodule."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("geolink_jax")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("geolink_jax"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub, None, node.lineno) if sub in mods else (mod, a.name, node.lineno))
    return out


def private_attributes(path, bound):
    """[(module, attribute, line)]: `alias._name` where `alias` is bound to a geolink_jax module by an import."""
    tree = ast.parse(path.read_text(), str(path))
    return [(bound[n.value.id], n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
            and n.attr.startswith("_") and not n.attr.startswith("__")]


def analyse(root=ROOT):
    """→ (module edges {module: {module}}, package edges {package: {package}}, violations [str])."""
    mods = modules(root)
    edges, problems = collections.defaultdict(set), []
    for name, path in mods.items():
        src = package_of(name)
        bound = {}
        for target, imported, line in imports(name, path, mods):
            where = f"{path.relative_to(root.parent)}:{line}"
            tgt_pkg = package_of(target)
            if target not in mods:
                problems.append(f"{where}: imports {target}, which does not exist")
                continue
            edges[name].add(target)
            if imported is None:
                bound[target.rsplit(".", 1)[-1]] = target
            shown = target + (f".{imported}" if imported else "")
            leaf = imported or target.rsplit(".", 1)[-1]
            if tgt_pkg != src and leaf.startswith("_") and not leaf.startswith("__"):
                problems.append(f"{where}: imports the private name {shown} from another package")
            if tgt_pkg == src or tgt_pkg == "<root>":
                continue
            if src in FAMILIES and tgt_pkg in FAMILIES:
                problems.append(f"{where}: family {src} imports family {tgt_pkg} ({shown})")
            elif tgt_pkg in FAMILIES:
                problems.append(f"{where}: shared package {src} imports family {tgt_pkg} ({shown})")
            elif src in FAMILIES and tgt_pkg not in FAMILY_MAY_IMPORT:
                problems.append(f"{where}: family {src} imports the entry point {tgt_pkg} ({shown})")
            elif src in ALLOWED and tgt_pkg not in ALLOWED[src]:
                problems.append(f"{where}: {src} may not import {tgt_pkg} ({shown}; allowed: "
                                f"{', '.join(sorted(ALLOWED[src])) or 'nothing'})")
            elif src not in ALLOWED and src not in FAMILIES and src != "<root>":
                problems.append(f"{where}: package {src} is in no layer (add it to layering.ALLOWED)")
        for module, attr, line in private_attributes(path, bound):
            if package_of(module) != src:
                problems.append(f"{path.relative_to(root.parent)}:{line}: reaches the private name {module}.{attr} "
                                "from another package")
    problems += [f"import cycle: {' → '.join(c)}" for c in cycles(edges)]
    packages = collections.defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if package_of(a) != package_of(b):
                packages[package_of(a)].add(package_of(b))
    return edges, packages, problems


def cycles(edges):
    """The strongly connected components of the module graph with more than one module (Tarjan), each as one
    cycle through it, sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv=sys.argv[1:]):
    root = pathlib.Path(argv[0]) if argv else ROOT
    _, packages, problems = analyse(root)
    print("package import graph (shared packages, then families):")
    for pkg in [p for p in ALLOWED if p in packages or p in ALLOWED] + list(FAMILIES):
        print(f"  {pkg:<11} → {', '.join(sorted(packages.get(pkg, ()))) or '(nothing)'}")
    print(f"{len(problems)} violation(s)")
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
