"""The preprocessing job as an Apache Beam pipeline, for cluster runners (Dataflow, Flink, Spark).

Same per-tile function, shard assignment and manifest as the local runner (`preprocess.py`), so a run gives the
same shards. Stages: Create(specs) → Map(process_tile) → key by shard → GroupByKey → write one ArrayRecord file
per shard (sorted by tile index) → combine summaries + shard infos → manifest.json, errors.jsonl.

Output may be a local path or any Beam filesystem URL (gs://…): shards are written to a local temporary file and
copied through `apache_beam.io.filesystems.FileSystems`.
"""
import datetime
import json
import os
import tempfile
import time

from geolink_jax.data import preprocess
from geolink_jax.data import shards


def _is_remote(path):
    return "://" in str(path)


def join_path(out_dir, name):
    return f"{str(out_dir).rstrip('/')}/{name}"


def write_bytes(path, data):
    if not _is_remote(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def write_shard(item, out_dir, n_shards):
    """(shard index, [(tile index, record bytes) or None]) → {'path', 'num_records'}."""
    k, entries = item
    records = [rec for _, rec in sorted(e for e in entries if e is not None)]
    name = shards.shard_name(k, n_shards)
    if _is_remote(out_dir):
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            count = shards.write_shard(local, records)
            with open(local, "rb") as f:
                write_bytes(join_path(out_dir, name), f.read())
    else:
        count = shards.write_shard(join_path(out_dir, name), records)
    return {"path": name, "num_records": count}


def finalize(summaries, shard_infos, out_dir, cfg, n_tiles, seconds_since):
    manifest = preprocess.make_manifest(summaries, shard_infos, cfg, n_tiles)
    manifest["runner"] = {"name": "beam", "workers": None, "seconds": time.time() - seconds_since,
                          "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    errors = "".join(json.dumps(p, sort_keys=True) + "\n"
                     for s in sorted(summaries, key=lambda s: s["index"]) for p in s["problems"])
    write_bytes(join_path(out_dir, preprocess.ERRORS), errors.encode())
    write_bytes(join_path(out_dir, preprocess.MANIFEST),
                 (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


def _strict_check(result):
    preprocess.check_strict(result)
    return result


def build_pipeline(pipeline, specs, out_dir, cfg, strict=False):
    """Add the preprocessing stages to `pipeline`. Returns the PCollection holding the manifest."""
    import apache_beam as beam

    n_tiles = len(specs)
    n_shards = preprocess.num_shards(n_tiles, cfg)
    started = time.time()
    results = (pipeline
               | "Tiles" >> beam.Create(sorted(specs, key=lambda s: s.index))
               | "Reshuffle" >> beam.Reshuffle()  # spread tiles over workers
               | "ProcessTile" >> beam.Map(preprocess.process_tile, cfg))
    if strict:
        results = results | "Strict" >> beam.Map(_strict_check)
    keyed = (results
             | "Written" >> beam.Filter(lambda r: r.record is not None)
             | "KeyByShard" >> beam.Map(
                 lambda r: (shards.shard_of(r.index, n_tiles, n_shards), (r.index, r.record))))
    # Every shard exists even if all its tiles failed, as with the local runner.
    every_shard = pipeline | "AllShards" >> beam.Create([(k, None) for k in range(n_shards)])
    shard_infos = ((keyed, every_shard)
                   | "Flatten" >> beam.Flatten()
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.Map(write_shard, out_dir, n_shards))
    summaries = results | "Summaries" >> beam.Map(lambda r: r.summary)
    return (summaries
            | "AllSummaries" >> beam.combiners.ToList()
            | "Manifest" >> beam.Map(finalize, beam.pvalue.AsList(shard_infos), out_dir, cfg, n_tiles, started))


def run_beam(specs, out_dir, cfg=preprocess.PreprocessConfig(), strict=False, beam_args=()):
    """Run the pipeline (DirectRunner unless `beam_args` names another runner) and return the manifest."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=DirectRunner")
    if not _is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    try:
        with beam.Pipeline(options=PipelineOptions(args)) as p:
            build_pipeline(p, specs, str(out_dir), cfg, strict)
    except Exception as e:
        # Runners wrap exceptions raised in user code; surface a strict stop as such.
        if "PreprocessError" in f"{type(e).__name__}: {e}" or isinstance(e, preprocess.PreprocessError):
            msg = str(e).split("PreprocessError:")[-1].strip().splitlines()[0]
            raise preprocess.PreprocessError(msg) from e
        raise
    if _is_remote(out_dir):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(join_path(out_dir, preprocess.MANIFEST)) as f:
            return json.loads(f.read())
    return preprocess.load_manifest(out_dir)
