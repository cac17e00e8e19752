"""ArrayRecord shard files of tile records: naming, writing (group_size:1, explicit codec) and reading."""
import pathlib

import numpy as np
from array_record.python import array_record_module

from geolink_jax.data import outputs, record_format

# group_size:1 gives grain O(1) random access; images are already compressed, so a light zstd level.
WRITER_OPTIONS = "group_size:1,zstd:1"
READER_OPTIONS = "readahead_buffer_size:0"
SHARD_PREFIX = "geolink_tiles.array_record"


def shard_name(index, count):
    """TFDS-style `geolink_tiles.array_record-00000-of-00004`."""
    return f"{SHARD_PREFIX}-{index:05d}-of-{count:05d}"


def num_shards(num_items, items_per_shard):
    """How many shards hold `num_items` at most `items_per_shard` each (at least one)."""
    return max(1, -(-num_items // items_per_shard))


def shard_of(tile_index, num_tiles, num_shards):
    """Contiguous, order-preserving assignment of input tile `tile_index` to a shard."""
    return tile_index * num_shards // max(num_tiles, 1)


def write_shard(path, records):
    """Write encoded records (bytes) to `path` atomically: a partial file never carries the final name."""
    count = 0
    with outputs.atomic_path(path) as tmp:
        writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
        try:
            for rec in records:
                writer.write(rec)
                count += 1
        finally:
            writer.close()
    return count


def read_shard(path, decode=record_format.decode):
    """All records of one shard, decoded (by `decode`: another family's record format), in order."""
    reader = array_record_module.ArrayRecordReader(str(path), READER_OPTIONS)
    try:
        return [decode(r) for r in reader.read_all()]
    finally:
        reader.close()


def writer_options(path):
    reader = array_record_module.ArrayRecordReader(str(path), READER_OPTIONS)
    try:
        return reader.writer_options_string()
    finally:
        reader.close()


class DataError(ValueError):
    """A data directory that cannot be used as it is (missing, changed or unreadable shards); the message names the
    file."""


class ShardSource:
    """grain random-access source over shard files whose read errors name the shard and the record in it.

    ArrayRecord files are riegeli files: every chunk carries a hash, so a flipped bit or a cut is caught when its
    record is read; here it becomes a DataError naming `shard: record i` instead of a bare RuntimeError from a
    reader thread."""

    def __init__(self, paths):
        import grain

        self.paths = [str(p) for p in paths]
        self._source = grain.sources.ArrayRecordDataSource(self.paths)
        self._ends = np.cumsum([_record_count(p) for p in self.paths])

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        try:
            return self._source[index]
        except Exception as e:  # noqa: BLE001 - any failed read is a damaged record, named
            shard = int(np.searchsorted(self._ends, index, side="right"))
            record = int(index - (self._ends[shard - 1] if shard else 0))
            raise DataError(f"{self.paths[shard]}: record {record} is damaged ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); preprocess again or restore the "
                            "file") from None

    def __repr__(self):
        return f"ShardSource({len(self.paths)} files)"


def _record_count(path):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    try:
        return len(ArrayRecordDataSource([str(path)]))
    except Exception as e:  # noqa: BLE001 - an unreadable shard is a data error, named
        raise DataError(f"{path}: not a readable ArrayRecord file ({e})") from None


def manifest_shards(directory, manifest):
    """The manifest's shard list (the only truth: stray or leftover files beside it are never read), each checked
    to exist and hold the record count the manifest gives → paths."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    directory = pathlib.Path(directory)
    paths = []
    for shard in manifest.get("shards", []):
        file = directory / shard["path"]
        if not file.is_file():
            raise DataError(f"{file}: listed in {directory / 'manifest.json'} but missing")
        count = _record_count(file)
        if count != shard["num_records"]:
            raise DataError(f"{file}: {count} records, the manifest says {shard['num_records']} (the directory "
                            "changed after preprocessing; preprocess again)")
        if count and "feature_dim" in manifest:  # the tag-feature width the model is built for
            try:
                first = record_format.decode(ArrayRecordDataSource([str(file)])[0])
            except Exception as e:  # noqa: BLE001 - a damaged record is a data error, named
                raise DataError(f"{file}: record 0 cannot be decoded ({type(e).__name__}: {e})") from None
            width = np.shape(first.get("x_polygon", np.zeros((0, manifest["feature_dim"]))))[-1]
            if width != manifest["feature_dim"]:
                raise DataError(f"{file}: {width}-d tag features, the manifest says {manifest['feature_dim']}-d "
                                "(shards of different runs mixed; preprocess again)")
        paths.append(file)
    return paths
