"""What a family's `features` hook returns: a `FeatureFn`, the encoder of one input modality as a pure function.

    fn = family.features(model, wavelengths_um, modality)      # ValueError: the model cannot take that input
    out = fn(host_inputs)                                        # numpy, one jit per input shape
    out = fn.apply(fn.model, fn.prepare(host_inputs))            # jax, traceable: fine-tuning differentiates it

Modalities and their inputs (host side):
  image      float32 [B, H, W, C] in [0, 1], bands at `wavelengths_um`
  image+osm  (images as above, GraphBatch of numpy arrays): a tile and its OpenStreetMap graph
  photo      float32 [B, H, W, 3] in [0, 1]: ground-level (street-view) photos
  location   float32 [B, 2]: (lon, lat) in degrees
  text       list of B strings
Outputs (what a family can give; a protocol reads the ones it needs):
  pooled [B, D]; grid [B, h, w, D] (the final feature map); levels [B, 4, h, w, D] (four maps from shallow to
  deep, for UperNet); embedding [B, E] (L2-normalised, the image–text space: zero-shot and retrieval).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def as_float32(inputs):
    return jnp.asarray(np.asarray(inputs, np.float32))


class FeatureFn:
    """model: the nnx module; apply(model, prepared inputs) → {output: jax array}; prepare(host inputs) → jax
    inputs (default: float32 arrays); modality: what the inputs are. With several devices the weights are
    replicated once and every batch whose size they divide is split over them (data parallel)."""

    def __init__(self, model, apply, modality="image", prepare=as_float32):
        self.model, self.apply, self.modality, self.prepare = model, apply, modality, prepare
        graphdef, state = nnx.split(model)
        self._batch_sharding = None
        if jax.device_count() > 1:
            mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
            state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
            self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        self._state = state
        # `keep` (static): the outputs wanted; the others are neither computed beyond what those need nor copied
        self._run = jax.jit(lambda state, x, keep: _kept(apply(nnx.merge(graphdef, state), x), keep),
                            static_argnums=2)

    def device_outputs(self, inputs, keep=None):
        """{output: jax array} of host inputs, on the devices; keep: the outputs wanted (None: all)."""
        x = self.prepare(inputs)
        if self._batch_sharding is not None:
            n = jax.device_count()
            x = jax.tree.map(lambda a: jax.device_put(a, self._batch_sharding) if a.ndim and a.shape[0] % n == 0
                             else a, x)
        return self._run(self._state, x, None if keep is None else tuple(keep))

    def __call__(self, inputs, keep=None):
        """{output: numpy float32 (a tuple of them for per-level maps of several widths)}."""
        return {k: tuple(np.asarray(a, np.float32) for a in v) if isinstance(v, (tuple, list)) else
                np.asarray(v, np.float32) for k, v in self.device_outputs(inputs, keep).items()}


def _kept(outputs, keep):
    return outputs if keep is None else {k: outputs[k] for k in keep if k in outputs}


def level_blocks(depth):
    """The blocks whose outputs are the four UperNet levels: the ends of the encoder's four quarters (ViT-B's 2, 5,
    8, 11; PANGAEA reads 3, 5, 7, 11)."""
    return tuple(max(0, depth * q // 4 - 1) for q in (1, 2, 3, 4))


def stack_levels(taps, blocks, grid_hw):
    """{block: tokens [B, h·w, D]} → [B, 4, h, w, D] in `blocks` order."""
    h, w = grid_hw
    return jnp.stack([taps[b].reshape(taps[b].shape[0], h, w, -1) for b in blocks], 1).astype(jnp.float32)


def unsupported(family, modality, supported):
    """The ValueError for a modality a family has no encoder for."""
    return ValueError(f"the {family} family has no {modality} encoder (it takes: {', '.join(supported)})")
