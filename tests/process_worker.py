"""One process of a pretraining run, with the records it reads logged (run by test_multiprocess.py).

    python tests/process_worker.py READ_LOG geolink-jax pretrain args…

XLA_FLAGS (simulated devices) and the --config.process.* flags come from the caller. Each record index the
process reads from the shards is appended to READ_LOG as one line, as it is read.
"""
import sys

from geolink_jax import cli
from geolink_jax.data import shards

log = open(sys.argv[1], "a", buffering=1)
_read = shards.ShardSource.__getitem__


def _logged(self, index):
    log.write(f"{index}\n")
    return _read(self, index)


shards.ShardSource.__getitem__ = _logged
sys.exit(cli.main(sys.argv[2:]))
