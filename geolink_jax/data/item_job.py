"""A preprocessing job over independent items (GAIR patches, DOFA-CLIP image–caption rows): each item → one record
or none, records → ArrayRecord shards by item index, plus manifest.json and errors.jsonl. Run in this process
(`run_local`, staged: the output appears whole or not at all) or as an Apache Beam pipeline (`run_beam`), with the
same records and shards.

`process(spec) -> (record bytes | None, summary)`: the summary holds at least `index` (the spec's position) and
`problems` (the errors.jsonl rows: dicts with `severity` and `reason`), a bad item is reported, never raised.
`manifest(summaries, shard_infos, extra_problems) -> dict`: the family's manifest. `extra_problems` are rows found
before any item ran (a table row naming no file, …).
"""

import os
import pathlib
import tempfile
import time

from geolink_jax.data import outputs, shards


def write_outputs(out_dir, summaries, shard_infos, manifest, extra_problems, runner):
    """errors.jsonl and manifest.json (local paths or any Beam filesystem URL). Returns the manifest."""
    out = manifest(summaries, shard_infos, extra_problems)
    out["runner"] = runner
    problems = list(extra_problems) + [p for s in sorted(summaries, key=lambda s: s["index"]) for p in s["problems"]]
    outputs.write_jsonl(outputs.join_path(out_dir, outputs.ERRORS), problems)
    outputs.write_json(outputs.join_path(out_dir, outputs.MANIFEST), out)
    return out


def write_shard(item, out_dir, n_shards):
    """(shard index, [(tile index, record bytes) or None]) → {'path', 'num_records'}."""
    k, entries = item
    records = [rec for _, rec in sorted(e for e in entries if e is not None)]
    name = shards.shard_name(k, n_shards)
    if outputs.is_remote(out_dir):
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            count = shards.write_shard(local, records)
            with open(local, "rb") as f:
                outputs.write_bytes(outputs.outputs.join_path(out_dir, name), f.read())
    else:
        count = shards.write_shard(outputs.join_path(out_dir, name), records)
    return {"path": name, "num_records": count}


def run_local(specs, process, manifest, out_dir, items_per_shard, extra_problems=(), progress=True,
              overwrite=False, unit="item"):
    from tqdm import tqdm

    def write(staging):
        start = time.perf_counter()
        n_shards = shards.num_shards(len(specs), items_per_shard)
        pending = {k: [] for k in range(n_shards)}
        summaries = []
        for spec in tqdm(specs, unit=unit, desc="preprocess", disable=not progress):
            record, summary = process(spec)
            summaries.append(summary)
            if record is not None:
                pending[shards.shard_of(summary["index"], len(specs), n_shards)].append(record)
        infos = []
        for k in range(n_shards):
            name = shards.shard_name(k, n_shards)
            infos.append({"path": name, "num_records": shards.write_shard(str(staging / name), pending[k])})
        return write_outputs(staging, summaries, infos, manifest, extra_problems,
                             {"name": "local", "seconds": time.perf_counter() - start})

    return outputs.staged_output(out_dir, overwrite, write)


def run_beam(specs, process, manifest, out_dir, items_per_shard, extra_problems=(), pipeline_options=None):
    """The same job as a Beam pipeline (DirectRunner locally; Dataflow/Flink/Spark on a cluster): items in
    parallel, one ArrayRecord file per shard. Returns the manifest."""
    import apache_beam as beam

    n_shards = shards.num_shards(len(specs), items_per_shard)
    start = time.time()
    if "://" not in str(out_dir):
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=pipeline_options) as p:
        results = p | "specs" >> beam.Create(specs) | "item" >> beam.Map(process)
        infos = (results
                 | "by shard" >> beam.Map(lambda r: (shards.shard_of(r[1]["index"], len(specs), n_shards),
                                                     (r[1]["index"], r[0]) if r[0] is not None else None))
                 | "group" >> beam.GroupByKey()
                 | "write shards" >> beam.Map(write_shard, out_dir, n_shards))
        summaries = results | "summaries" >> beam.Map(lambda r: r[1])
        _ = (p | "once" >> beam.Create([None])
             | "manifest" >> beam.Map(lambda _, s, i: write_outputs(out_dir, s, i, manifest, extra_problems,
                                                                    {"name": "beam", "seconds": time.time() - start}),
                                      beam.pvalue.AsList(summaries), beam.pvalue.AsList(infos)))
    return outputs.load_manifest(out_dir)
