"""Host CPU per training sample of the input pipeline, alone (issues 15, 27): what a pod host must spend on input.

    geolink-jax bench --only input [--config.input.config=gair_vit_b] [--config.input.workers=2]

On an accelerator host the step runs on the devices; what limits input is how many host cores it takes to feed
them. For a named config of any family on that family's bundled real data (`Family.default_data`; 224 px for the
pod configs), the pipeline runs alone (no step) and its CPU time — this process and its grain worker processes,
all threads — is divided by what it made: milliseconds of one core per record and per image in the family's unit
(`Family.sample_unit`: GeoLink and MAE images, GAIR photos — counted from the batches' `stats`, the real photos,
not the padded budget —, DOFA-CLIP pairs). Where the family has on-device augmentation (`data.augment_on_device`:
the host only decodes; the rest runs in the step) the host path and it are measured alternately in one run,
several rounds each, so their ratio is immune to the machine's drift; otherwise the host path alone.

For GeoLink the row also carries a per-stage breakdown of one sample (single thread, medians): record read, record
decode, image decode, draws, graph crop + fit, pixel work, batching.
"""

import io
import statistics
import tempfile
import time

import numpy as np


def _cpu_seconds():
    """User + system CPU of this process and its live children (grain workers), all threads."""
    import psutil

    proc = psutil.Process()
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def _config(name, data_dir, batch, on_device, workers, threads, overrides=()):
    from geolink_jax import config as config_lib
    from geolink_jax.train import trainer

    config = config_lib.load_file(name)
    config.data.path = data_dir
    config.batch_size = batch
    config.data.update(worker_count=workers, read_threads=threads)
    config.data.augment_on_device = on_device
    config.update_from_flattened_dict(dict(overrides))
    paths, manifest = trainer.prepare_data(config, None)
    return trainer.resolve(config, manifest), paths, manifest


def bundled_data(name, workdir, overrides=(), preprocess_args=()):
    """The named config's family's bundled real data, prepared in workdir as a run without data.path does, or, with
    `preprocess_args`, by `geolink-jax preprocess --family <its family> <args>` (e.g. GAIR's --sv-size 224)."""
    import subprocess
    import sys

    from geolink_jax import config as config_lib
    from geolink_jax import family as family_lib

    config = config_lib.load_file(name)
    config.update_from_flattened_dict(dict(overrides))
    if preprocess_args:
        out = f"{workdir}/preprocessed"
        subprocess.run([sys.executable, "-m", "geolink_jax.cli", "preprocess", "--family", config.family, "--out", out,
                        "--no-progress", *preprocess_args], check=True, capture_output=True)
        return out
    return str(family_lib.get_family(config.family).default_data(config, workdir))


def ms_core_per_sample(name, data_dir, *, batch, batches, on_device, workers, threads, settle_s=2.0, overrides=()):
    """(ms of CPU per record, records/s wall, idle cores, images per record) of the named config's pipeline alone,
    after two warm-up batches; images in the family's unit (`stats[unit]` of the batches where they count it)."""
    from geolink_jax import family as family_lib

    config, paths, manifest = _config(name, data_dir, batch, on_device, workers, threads, overrides)
    fam = family_lib.get_family(config.family)
    model_cfg = family_lib.model_config(fam, config)
    unit, per_record = fam.sample_unit(model_cfg)
    it = iter(fam.dataset(paths, manifest, config, model_cfg))
    for _ in range(2):
        next(it)
    # Reader threads and worker processes keep a few batches ready. Between two moments when every buffer is full
    # and idle, the pipeline made exactly the batches consumed in between: CPU is read at those two moments.
    # The background rate (idle threads and workers polling) is measured over a settled window and taken off.
    time.sleep(settle_s)
    idle0, i0 = _cpu_seconds(), time.perf_counter()
    time.sleep(settle_s)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    idle_rate = (cpu0 - idle0) / (t0 - i0)
    images = 0
    for _ in range(batches):
        b = next(it)
        stats = b.get("stats", {})
        images += int(np.sum(stats[unit])) if unit in stats else batch * per_record
    wall = time.perf_counter() - t0
    time.sleep(settle_s)
    cpu = _cpu_seconds() - cpu0 - idle_rate * (time.perf_counter() - t0)
    it.close()  # stop its readers before the next measurement, whose CPU time they would otherwise add to
    time.sleep(0.5)
    n = batches * batch
    return 1000 * cpu / n, n / wall, idle_rate, images / n


def breakdown(name, data_dir, on_device, samples=200):
    """Median ms per sample of each stage, one thread, no grain: where the host time goes."""
    from PIL import Image

    from geolink_jax.data import record_format, shards
    from geolink_jax.tiles import augment, pipeline
    from geolink_jax.tiles.graph_batch import GraphBudget, fit_to_budget

    config, paths, manifest = _config(name, data_dir, 8, on_device, 0, 0)
    cfg = pipeline.pipeline_config(config, manifest, 224)
    source = shards.ShardSource(paths)
    budget = GraphBudget.from_manifest(manifest, config.data.budget_stat)
    rng = np.random.default_rng(0)
    times = {k: [] for k in ("record_read", "record_decode", "image_decode", "draws", "graph_crop_fit", "pixels",
                             "batching")}
    sample_list = []
    for i in range(samples):
        t = [time.perf_counter()]
        raw = source[i % len(source)]
        t.append(time.perf_counter())
        record = record_format.decode(raw)
        graph = pipeline.tile_graph_from_record(record, lean=True)
        t.append(time.perf_counter())
        pil = Image.open(io.BytesIO(record["image"]))
        pil.load()
        t.append(time.perf_counter())
        d = augment.draw(rng, cfg.augment)
        t.append(time.perf_counter())
        if not on_device:
            bbox, graph = augment.crop_and_flip(d, graph)
        graph, stats = fit_to_budget(graph, budget, rng)
        t.append(time.perf_counter())
        if on_device:
            pixels = np.asarray(pil)
            image = pixels
            params = dict(size=np.array(pixels.shape[:2], np.int32), box=np.asarray(d.box, np.float32),
                          flip=np.bool_(d.flip), jitter=np.ones(4, np.float32), jitter_order=np.arange(4))
            sample = dict(image=image, augment=params, graph=graph, stats=stats)
        else:
            if bbox is not None:
                pil = pil.crop(augment.crop_pixels(bbox, pil.size))
            pil = pil.resize((224, 224), Image.BILINEAR)
            if d.flip:
                pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
            if d.jitter is not None:
                pil = augment.apply_jitter_pil(pil, *d.jitter)
            image = augment.normalize(np.asarray(pil, np.float32) / 255.0)
            sample = dict(image=image, graph=graph, stats=stats)
        t.append(time.perf_counter())
        for k, a, b in zip(list(times)[:-1], t[:-1], t[1:]):
            times[k].append(1000 * (b - a))
        sample_list.append(sample)
    collate = pipeline.Collate(budget, cfg.canvas)
    for i in range(0, samples - 7, 8):
        t0 = time.perf_counter()
        collate(sample_list[i:i + 8])
        times["batching"].append(1000 * (time.perf_counter() - t0) / 8)
    return {k: statistics.median(v) for k, v in times.items()}


def run(cfg):
    """Suite `input`: host ms·core per record and per image, host path vs on-device augmentation where the family
    has it, one config and worker count, on the family's bundled data."""
    from geolink_jax import config as config_lib
    from geolink_jax import family as family_lib
    from geolink_jax.bench import rows

    overrides = tuple((k, v) for k, v in cfg.get("overrides", ()))
    args = " ".join(cfg.get("preprocess_args", ()))
    name = cfg.get("name") or (f"{cfg.config} input cost, {cfg.workers} worker(s)" + (f", preprocess {args}" if args
                                                                                       else "")
                               + "".join(f", {k}={v}" for k, v in overrides))
    row = rows.new_row("input", name, rows.flatten(cfg))
    config = config_lib.load_file(cfg.config)
    config.update_from_flattened_dict(dict(overrides))
    fam = family_lib.get_family(config.family)
    unit, _ = fam.sample_unit(family_lib.model_config(fam, config))
    paths = (False, True) if fam.device_augment else (False,)  # the family reads data.augment_on_device
    with tempfile.TemporaryDirectory() as tmp:
        data = bundled_data(cfg.config, tmp, overrides, tuple(cfg.get("preprocess_args", ())))
        ms, rates, idle, per_record = {p: [] for p in paths}, {p: [] for p in paths}, [], []
        for _ in range(cfg.rounds):  # alternate, so drift hits both paths alike
            for on_device in paths:
                got = ms_core_per_sample(cfg.config, data, batch=cfg.batch, batches=cfg.batches, on_device=on_device,
                                         workers=cfg.workers, threads=cfg.threads, settle_s=cfg.settle_s,
                                         overrides=overrides)
                ms[on_device].append(got[0])
                rates[on_device].append(got[1])
                idle.append(got[2])
                per_record.append(got[3])
        parts = {p: breakdown(cfg.config, data, p == "device", cfg.breakdown_samples) for p in ("host", "device")} \
            if config.family == "geolink" else {}
    m = row["metrics"]
    images = statistics.median(per_record)
    m.update(unit=unit, images_per_record=images, workers=cfg.workers, threads=cfg.threads,
             idle_cores_subtracted=statistics.median(idle), overrides=" ".join(f"{k}={v}" for k, v in overrides),
             preprocess_args=" ".join(cfg.get("preprocess_args", ())))
    for on_device, name in ((False, "host"), (True, "device")):
        if on_device in ms:
            med = statistics.median(ms[on_device])
            m[f"{name}_ms_core_per_sample"] = med
            m[f"{name}_ms_core_per_image"] = med / images
            m[f"{name}_samples_per_s"] = statistics.median(rates[on_device])
            row["times_s"][f"{name}_ms_per_sample"] = rows.stats([x / 1000 for x in ms[on_device]])
    for path, stages in parts.items():
        m.update({f"breakdown_ms.{path}.{k}": v for k, v in stages.items()})
    best = "device" if True in ms else "host"
    # cores an 8-GPU host needs at the rate (ViT-L at 45% MFU on H100: ~4,400 samples/s per GPU)
    m[f"cores_for_8xh100_{best}_path"] = m[f"{best}_ms_core_per_image"] * 8 * cfg.samples_per_s_per_gpu / 1000
    if True in ms:
        rows.ratio(row, "device_over_host", "metrics.device_ms_core_per_sample", "metrics.host_ms_core_per_sample")
    m["target_ms_core_per_image"] = cfg.target_ms
    rows.ratio(row, f"{best}_ms_per_image_over_target", f"metrics.{best}_ms_core_per_image",
               "metrics.target_ms_core_per_image", target=1.0 if cfg.target_ms else None, op="<=")
    return row
