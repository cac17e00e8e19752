"""The preprocessing job as an Apache Beam pipeline, for cluster runners (Dataflow, Flink, Spark).

Same per-tile function, shard assignment and manifest as the local runner (`preprocess.py`), so a run gives the
same shards. Stages: Create(specs) → Map(process_tile) → key by shard → GroupByKey → write one ArrayRecord file
per shard (sorted by tile index) → combine summaries + shard infos → manifest.json, errors.jsonl.

Output may be a local path or any Beam filesystem URL (gs://…): shards are written to a local temporary file and
copied through `apache_beam.io.filesystems.FileSystems`.
"""
import datetime
import os
import time

from geolink_jax.data import outputs, shards
from geolink_jax.data.item_job import write_shard
from geolink_jax.tiles import job as preprocess


def finalize(summaries, shard_infos, out_dir, cfg, n_tiles, seconds_since):
    manifest = preprocess.make_manifest(summaries, shard_infos, cfg, n_tiles)
    manifest["runner"] = {"name": "beam", "workers": None, "seconds": time.time() - seconds_since,
                          "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    preprocess.write_errors(outputs.join_path(out_dir, outputs.ERRORS), summaries)
    outputs.write_json(outputs.join_path(out_dir, outputs.MANIFEST), manifest)
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
    if not outputs.is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    try:
        with beam.Pipeline(options=PipelineOptions(args)) as p:
            build_pipeline(p, specs, str(out_dir), cfg, strict)
    except Exception as e:
        # Runners wrap exceptions raised in user code; surface a strict stop as such.
        if "JobError" in f"{type(e).__name__}: {e}" or isinstance(e, preprocess.PreprocessError):
            msg = str(e).split("JobError:")[-1].strip().splitlines()[0]
            raise preprocess.PreprocessError(msg) from e
        raise
    return outputs.load_manifest(out_dir)
