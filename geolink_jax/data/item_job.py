"""The one preprocessing job framework: independent items (tiles, GAIR patches, DOFA-CLIP image–caption rows), each
→ one record or none, records → ArrayRecord shards by item index, plus manifest.json and errors.jsonl. Run in this
process or in worker processes (`run_local`: shards written as they complete, staged: the output appears whole or
not at all) or as an Apache Beam pipeline (`run_beam`), with the same records and shards.

`process(spec) -> (record bytes | None, summary)`: the summary holds at least `index` (the spec's position) and
`problems` (the errors.jsonl rows: dicts with `severity` and `reason`), a bad item is reported, never raised.
`manifest(summaries, shard_infos, extra_problems) -> dict`: the family's manifest. `extra_problems` are rows found
before any item ran (a table row naming no file, …).
"""

import datetime
import os
import pathlib
import tempfile
import time

from geolink_jax.data import outputs, shards


def write_outputs(out_dir, summaries, shard_infos, manifest, extra_problems, runner):
    """errors.jsonl and manifest.json (local paths or any Beam filesystem URL). Returns the manifest."""
    out = manifest(summaries, shard_infos, extra_problems)
    out["runner"] = {**out.get("runner", {}), **runner,  # the job's own runner facts, then where and when it ran
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
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
                outputs.write_bytes(outputs.join_path(out_dir, name), f.read())
    else:
        count = shards.write_shard(outputs.join_path(out_dir, name), records)
    return {"path": name, "num_records": count}


def _init_worker():
    # One thread per worker process: parallelism comes from the processes.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def _in_worker(process, spec):
    # tests: a worker killed (the OOM killer) on item N, every time ("N") or only the first time ("N:marker file")
    target, _, marker = os.environ.get("GEOLINK_TEST_KILL_WORKER_ON", "").partition(":")
    if target == str(spec.index) and not (marker and os.path.exists(marker)):
        if marker:
            pathlib.Path(marker).touch()
        os.kill(os.getpid(), 9)
    return process(spec)


RETRIED = ("retried alone in a fresh process after a worker process died (killed or out of memory) while this item "
           "was in progress in its pool; the retry succeeded")


def results_in_order(specs, process, workers, dead_item):
    """process(spec) over specs, in input order, in `workers` spawned processes (`process` must pickle: a module
    function or a partial of one). A worker that dies (killed, out of memory) breaks the pool, which
    concurrent.futures notices (multiprocessing.Pool would wait forever): the first unfinished item is then retried
    alone in a fresh process, reported by `dead_item(spec)` if that one dies too, and the rest go on in a fresh
    pool; a retry that succeeds leaves a warning row (RETRIED) in the item's problems, beside its own. Every round
    consumes at least one item, so the job always ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")

    def pool_of(n):
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker)

    todo = list(specs)
    while todo:
        pool, broken_at = pool_of(workers), None
        try:
            futures = [pool.submit(_in_worker, process, spec) for spec in todo]
            for i, fut in enumerate(futures):
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken_at = i
                    break
                yield result
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if broken_at is None:
            return
        spec, alone = todo[broken_at], pool_of(1)
        try:
            record, summary = alone.submit(_in_worker, process, spec).result()
            # the item named as the family names it (the row dead_item would have written), as a warning
            row = {**dead_item(spec)[1]["problems"][0], "severity": "warning", "reason": RETRIED}
            summary["problems"] = [*summary["problems"], row]
            yield record, summary
        except BrokenProcessPool:
            yield dead_item(spec)
        finally:
            alone.shutdown(wait=False, cancel_futures=True)
        todo = todo[broken_at + 1:]


def run_local(specs, process, manifest, out_dir, items_per_shard, extra_problems=(), progress=True,
              overwrite=False, unit="item", workers=1, check=None, dead_item=None):
    """The job in this process, or (workers > 1, `dead_item` given) in worker processes: items in index order, each
    shard written as soon as its items are done (memory holds one shard's records), into a staging directory that
    replaces `out_dir` only when complete (an existing non-empty `out_dir` needs overwrite). `check(record,
    summary)` may raise a JobError to stop (--strict). Returns the manifest."""
    from tqdm import tqdm

    specs = sorted(specs, key=lambda s: s.index)
    n_shards = shards.num_shards(len(specs), items_per_shard)

    def write(staging):
        start = time.perf_counter()
        summaries, infos, pending, next_shard = [], [], {k: [] for k in range(n_shards)}, 0

        def flush(upto):
            nonlocal next_shard
            while next_shard < upto:
                name = shards.shard_name(next_shard, n_shards)
                infos.append({"path": name, "num_records": shards.write_shard(str(staging / name),
                                                                               pending.pop(next_shard))})
                next_shard += 1

        parallel = workers > 1 and len(specs) > 1 and dead_item is not None
        results = results_in_order(specs, process, workers, dead_item) if parallel else map(process, specs)
        bar = tqdm(results, total=len(specs), unit=unit, desc="preprocess", disable=not progress, smoothing=0.1)
        try:
            for record, summary in bar:
                if check is not None:
                    check(record, summary)
                summaries.append(summary)
                k = shards.shard_of(summary["index"], len(specs), n_shards)
                if record is not None:
                    pending[k].append(record)
                flush(k)  # index order: every shard before k is complete
                bar.set_postfix(problems=sum(bool(s["problems"]) for s in summaries))
            flush(n_shards)
        finally:
            if hasattr(results, "close"):
                results.close()  # stops the worker pool on an early exit
        return write_outputs(staging, summaries, infos, manifest, extra_problems,
                             {"name": "local", "workers": workers if parallel else 1,
                              "seconds": time.perf_counter() - start})

    return outputs.staged_output(out_dir, overwrite, write)


def run_beam(specs, process, manifest, out_dir, items_per_shard, extra_problems=(), pipeline_options=None,
             check=None):
    """The same job as a Beam pipeline (DirectRunner unless the options name a runner; Dataflow/Flink/Spark on a
    cluster): items spread over the workers, one ArrayRecord file per shard (every shard, even one whose items all
    failed, as the local runner writes them), then errors.jsonl and manifest.json. `check(record, summary)` may
    raise a JobError to stop the job (a --strict run): it surfaces as that JobError, not as the runner's wrapping.
    Returns the manifest."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    n_shards = shards.num_shards(len(specs), items_per_shard)
    start = time.time()
    if not outputs.is_remote(out_dir):
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    options = pipeline_options or PipelineOptions(["--runner=DirectRunner"])

    def checked(result):
        check(*result)
        return result

    try:
        with beam.Pipeline(options=options) as p:
            results = p | "specs" >> beam.Create(specs) | "spread" >> beam.Reshuffle() | "item" >> beam.Map(process)
            if check is not None:
                results = results | "check" >> beam.Map(checked)
            keyed = (results
                     | "written" >> beam.Filter(lambda r: r[0] is not None)
                     | "by shard" >> beam.Map(lambda r: (shards.shard_of(r[1]["index"], len(specs), n_shards),
                                                         (r[1]["index"], r[0]))))
            every_shard = p | "every shard" >> beam.Create([(k, None) for k in range(n_shards)])
            infos = ((keyed, every_shard) | "flatten" >> beam.Flatten() | "group" >> beam.GroupByKey()
                     | "write shards" >> beam.Map(write_shard, str(out_dir), n_shards))
            summaries = results | "summaries" >> beam.Map(lambda r: r[1])
            _ = (p | "once" >> beam.Create([None])
                 | "manifest" >> beam.Map(lambda _, s, i: write_outputs(
                     str(out_dir), s, i, manifest, extra_problems, {"name": "beam", "seconds": time.time() - start}),
                     beam.pvalue.AsList(summaries), beam.pvalue.AsList(infos)))
    except Exception as e:
        # runners wrap the exceptions of user code: a job stopped on purpose is reported as such
        if isinstance(e, outputs.JobError) or "JobError" in f"{type(e).__name__}: {e}":
            raise outputs.JobError(str(e).split("JobError:")[-1].strip().splitlines()[0]) from e
        raise
    return outputs.load_manifest(out_dir)
