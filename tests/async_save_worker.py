"""A process that is killed during an asynchronous checkpoint save (driven by tests/test_training.py).

    python tests/async_save_worker.py save DIR     → commits step 2, starts an async save of step 4, prints
                                                      SAVING and waits to be killed
    python tests/async_save_worker.py restore DIR  → JSON: latest step, whether the restored state and data iterator
                                                      equal step 2's, and whether a new save then succeeds
"""

import json
import os
import sys
import time

import grain
import numpy as np

from geolink_jax.train.checkpoint import Checkpointer

SIZE = 48 * 2**20  # float32 elements: ~200 MB of incompressible data keeps the async write busy for a while


def weights(step):
    return np.random.default_rng(step).standard_normal(SIZE, dtype=np.float32)


def data_iterator():
    return iter(grain.MapDataset.range(1000).shuffle(seed=0).to_iter_dataset())


def main():
    mode, directory = sys.argv[1:3]
    it = data_iterator()
    ckpt = Checkpointer(directory, save_every=1, async_save=True)
    if mode == "save":
        next(it), next(it)
        ckpt.save(2, dict(w=weights(2), step=np.asarray(2, np.int32)), it, json.dumps({"step": 2}), force=True)
        ckpt.wait()
        next(it), next(it)
        ckpt.save(4, dict(w=weights(4), step=np.asarray(4, np.int32)), it, json.dumps({"step": 4}), force=True)
        print("SAVING", sorted(os.listdir(directory)), flush=True)
        time.sleep(600)
    elif mode == "restore":
        latest = ckpt.latest_step()
        abstract = dict(w=np.zeros(SIZE, np.float32), step=np.asarray(0, np.int32))
        state = ckpt.restore(latest, abstract, it)
        expected = data_iterator()
        next(expected), next(expected)
        out = dict(latest=latest, step=int(state["step"]), weights_equal=bool(np.array_equal(state["w"], weights(2))),
                   next_item=int(next(it)), expected_item=int(next(expected)))
        ckpt.save(4, dict(w=weights(4), step=np.asarray(4, np.int32)), it, json.dumps({"step": 4}), force=True)
        ckpt.close()
        out["after_new_save"] = Checkpointer(directory, save_every=1).latest_step()
        print(json.dumps(out))


if __name__ == "__main__":
    main()
