"""The grain chain every family's input pipeline runs: ArrayRecord shards → seeded global shuffle (reshuffled each
epoch) → repeat → a per-element random map → this process's rows of each global batch → batch → iterator (reader
threads, optional worker processes). The iterator's state is a small dict (grain `get_state`/`set_state`),
checkpointed with the model so that a resumed run continues with exactly the next batch. Knows no record format:
the family's transform decodes."""

import grain

from geolink_jax.data import shards

MIN_SHUFFLE_SIZE = 1 << 16


class ProcessRows(grain.MapDataset):
    """This process's rows of each global batch of the parent stream: global batch k is elements [k·B, (k+1)·B),
    and process p of n reads rows [p·b, (p+1)·b) of it (B = n·b). Every process count therefore trains on the same
    global batches, row for row, and each process decodes only its own rows."""

    def __init__(self, parent, process_index, process_count, rows):
        super().__init__(parent)
        self._stream, self._rows, self._offset = parent, rows, process_index * rows
        self._global_rows = process_count * rows

    def __len__(self):
        return len(self._stream) // self._global_rows * self._rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._rows)
        return self._stream[batch * self._global_rows + self._offset + row]

    def __str__(self):
        return f"ProcessRows(rows {self._offset}..{self._offset + self._rows} of {self._global_rows})"


def batches(ds, transform, batch_fn, batch_size, *, train, seed, process_index=0, process_count=1):
    """A grain MapDataset of records → a MapDataset of per-host batches (`transform`: a grain RandomMap; `batch_fn`,
    None: stacked).

    Training: one global stream (seeded shuffle, repeated, per-element seeds) that every process builds alike; each
    process takes its rows of every global batch (`ProcessRows`). So the run is the same on any number of
    processes, and the iterator's position is the step count. Evaluation: each process reads every n-th record."""
    if train:
        if len(ds) < MIN_SHUFFLE_SIZE:
            # grain's index_shuffle costs ~1/n per read (4 ms at n=5, 42 us at 1024, 11 us from 65536 on): shuffle
            # small sets k epochs at a time instead (each record still appears exactly k times per k epochs).
            ds = ds.repeat(-(-MIN_SHUFFLE_SIZE // max(len(ds), 1)))
        ds = ds.seed(seed).shuffle().repeat().random_map(transform)
        if process_count > 1:
            ds = ProcessRows(ds, process_index, process_count, batch_size)
    else:
        ds = ds[process_index::process_count].seed(seed).random_map(transform)
    return ds.batch(batch_size, drop_remainder=train, batch_fn=batch_fn)


def iterate(ds, read_threads, worker_count):
    """A MapDataset of batches → the IterDataset the trainer reads: reader threads, optional worker processes."""
    # Reader threads overlap JPEG decoding and resizing (which release the GIL); the per-sample graph work holds it.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(
        2 * read_threads, 1)))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; as a library we may run outside absl.app
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


def batched(paths, transform, batch_fn, batch_size, *, train, seed, read_threads, worker_count, process_index=0,
            process_count=1):
    """Records of ArrayRecord shard paths → per-host batches (`batches`) → iterator (`iterate`)."""
    ds = batches(grain.MapDataset.source(shards.ShardSource(paths)), transform, batch_fn, batch_size, train=train,
                 seed=seed, process_index=process_index, process_count=process_count)
    return iterate(ds, read_threads, worker_count)


def mixed(streams, weights, train):
    """Several MapDatasets of batches (one per group of like records: a batch never mixes groups) → one: mixed in
    proportion to `weights` for training, one after another for evaluation."""
    return grain.MapDataset.mix(streams, weights) if train else grain.MapDataset.concatenate(streams)
