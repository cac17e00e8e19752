"""Small Flax NNX building blocks shared by every GeoLink module.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (one name per dimension, None = never
sharded). The mesh rule table in the training config maps these names onto mesh axes; nothing here knows the
mesh. Logical names used:

  embed       model width of a transformer (ViT encoder/decoder, fusion block)
  mlp         transformer MLP hidden width
  heads, head_dim
  qkv         the size-3 q/k/v axis of a fused input projection
  patch_in    flattened patch pixels (p*p*C)
  node_in     OSM node feature width (512), node_hidden: GNN width (128), gates: LSTM 4*hidden
  proj        small projection outputs (contrastive 64-d, type attention 1)

Parameters are float32 (`param_dtype`); matmuls run in `dtype` (float32 or bfloat16); LayerNorm statistics and
softmaxes always run in float32.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs, init, shape, axes, dtype=jnp.float32):
    """A trainable parameter initialised by `init(key, shape, dtype)` with logical axis names."""
    assert len(axes) == len(shape), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=tuple(axes))


class FrozenParam(nnx.Param):
    """A parameter that is loaded and checkpointed but never trained (no gradient, no optimizer state): GAIR's
    fixed random Fourier features, a locked text tower."""


def freeze(module):
    """Turn every Param of `module` into a FrozenParam in place (same value, same logical axes); returns it."""
    for path, var in list(nnx.iter_graph(module)):
        if isinstance(var, nnx.Param) and not isinstance(var, FrozenParam):
            parent = module
            for p in path[:-1]:
                parent = parent[p] if isinstance(parent, (nnx.Dict, nnx.List)) else getattr(parent, p)
            new = FrozenParam(var.get_value(), logical_axes=var.get_metadata().get("logical_axes"))
            if isinstance(parent, (nnx.Dict, nnx.List)):
                parent[path[-1]] = new
            else:
                setattr(parent, path[-1], new)
    return module


def xavier_uniform(fan_in_axes=(0,), fan_out_axes=(-1,)):
    """Glorot uniform over an N-d kernel whose fan-in/fan-out are products of the given axes.

    Matches torch.nn.init.xavier_uniform_ on the equivalent 2-D PyTorch weight (and PyG glorot)."""

    def init(key, shape, dtype=jnp.float32):
        out_axes = tuple(a % len(shape) for a in fan_out_axes)
        return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=fan_in_axes,
                                                    out_axis=out_axes)(key, shape, dtype)

    return init


def trunc_normal(std=0.02):
    """timm's trunc_normal_(std) with cutoff ±2 (absolute, i.e. ±100σ: effectively a normal)."""

    def init(key, shape, dtype=jnp.float32):
        return (std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32)).astype(dtype)

    return init


def normal(std=0.02):
    return jax.nn.initializers.normal(std)


def uniform(limit):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


@jax.custom_vjp
def linear(x, kernel):
    """x [..., in] @ kernel [in, out], with a backward pass that keeps the weight-gradient transposes cheap.

    The backward is the usual (dx = g·Wᵀ, dW = xᵀ·g). The incoming gradient g is passed through an
    optimization barrier first: without it XLA:CPU fuses g's producer (LayerNorm backward + residual sum) into the
    transpose its matmul kernel wants for dW, and that transposed-order elementwise loop ran ~20× slower than the
    same work done in order and transposed afterwards (ViT-B step, mask 0.75: 24 such fusions, 150 ms of 900)."""
    return x @ kernel


def _linear_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _linear_bwd(res, g):
    x, kernel = res
    g = jax.lax.optimization_barrier(g)
    dx = g @ kernel.T
    dw = jnp.tensordot(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]), axes=(0, 0))
    return dx, dw.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nnx.Module):
    """y = x @ kernel + bias. kernel: [in, out] (the PyTorch Linear weight transposed), bias: [out]."""

    def __init__(self, in_features, out_features, *, rngs, axes=(None, None), kernel_init=None, use_bias=True,
                 dtype=jnp.float32):
        kernel_init = kernel_init or xavier_uniform()
        self.kernel = param(rngs, kernel_init, (in_features, out_features), axes)
        self.bias = param(rngs, zeros, (out_features,), axes[1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x):
        y = linear(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """Per-token LayerNorm over the last axis, statistics in float32, output in `dtype`. scale/bias: [dim]."""

    def __init__(self, dim, *, eps, axes=(None,), dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=tuple(axes))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=tuple(axes))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


def masked_softmax(logits, mask, axis=-1, eps=0.0):
    """Softmax over `axis` restricted to `mask`; fully masked rows give all-zero weights (never NaN).

    logits: float [..., N]; mask: bool broadcastable to logits. eps is added to the denominator (PyG adds 1e-16).
    Computed in float32."""
    logits = logits.astype(jnp.float32)
    peak = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=axis, keepdims=True)
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    p = jnp.where(mask, jnp.exp(jnp.where(mask, logits - peak, 0.0)), 0.0)
    total = p.sum(axis=axis, keepdims=True)
    return p / jnp.where(total > 0, total + eps, 1.0)  # 0/0 would poison gradients even where unused


class MultiHeadAttention(nnx.Module):
    """Attention with a fused q/k/v projection in the PyTorch row order.

    in_proj kernel: [E, 3, H, Dh] (= timm `qkv.weight.T` / torch MHA `in_proj_weight.T` reshaped), bias [3, H, Dh];
    out_proj kernel: [H, Dh, E], bias [E]. `__call__(q_in, k_in, v_in)` projects each input with its slice, so
    self-attention (one input) and the fusion block's q = k + PE, v = k both fit.

    Without dropout and without returning weights, the product runs through `jax.nn.dot_product_attention`
    (`implementation` None → XLA, 'cudnn' on GPU). Otherwise the softmax is explicit so attention-probability
    dropout (torch.nn.MultiheadAttention semantics) and head-averaged weights are available.
    """

    def __init__(self, dim, num_heads, *, rngs, qkv_init, out_init, dtype=jnp.float32, dropout=0.0,
                 implementation=None, qkv_bias=True):
        head_dim = dim // num_heads
        assert head_dim * num_heads == dim, (dim, num_heads)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.in_proj = nnx.Dict(
            kernel=param(rngs, qkv_init, (dim, 3, num_heads, head_dim), ("embed", "qkv", "heads", "head_dim")))
        if qkv_bias:  # CROMA's to_qkv has none
            self.in_proj["bias"] = param(rngs, zeros, (3, num_heads, head_dim), ("qkv", "heads", "head_dim"))
        self.out_proj = nnx.Dict(
            kernel=param(rngs, out_init, (num_heads, head_dim, dim), ("heads", "head_dim", "embed")),
            bias=param(rngs, zeros, (dim,), ("embed",)),
        )
        self.dtype = dtype
        self.dropout = dropout
        self.implementation = implementation

    def _in_bias(self):
        return self.in_proj["bias"][...].astype(self.dtype) if "bias" in self.in_proj else 0.0

    def _project(self, x, i):
        w = self.in_proj["kernel"][:, i].astype(self.dtype)
        b = self._in_bias()
        return jnp.einsum("btd,dhk->bthk", x.astype(self.dtype), w) + (b[i] if "bias" in self.in_proj else b)

    def __call__(self, q_in, k_in=None, v_in=None, *, key_mask=None, bias=None, dropout_key=None,
                 return_weights=False):
        """q_in: [B, Tq, E]; k_in, v_in: [B, Tk, E] (default q_in); key_mask: bool [B, Tk], True = attend;
        bias: float [H, Tq, Tk] (or broadcastable to [B, H, Tq, Tk]) added to the attention logits (ALiBi).

        Returns out [B, Tq, E] (and head-averaged weights float32 [B, Tq, Tk] if return_weights)."""
        if k_in is None and v_in is None:
            # self-attention: one [E, 3·H·Dh] matmul (the kernel reshape is free) instead of three strided slices,
            # which XLA would copy out in the forward and backward passes
            w = self.in_proj["kernel"][...].astype(self.dtype).reshape(q_in.shape[-1], -1)
            b = self._in_bias()
            qkv = linear(q_in.astype(self.dtype), w) + (b.reshape(-1) if "bias" in self.in_proj else b)
            q, k, v = jnp.unstack(qkv.reshape(*qkv.shape[:-1], 3, self.num_heads, self.head_dim), axis=-3)
        else:
            k_in = q_in if k_in is None else k_in
            v_in = k_in if v_in is None else v_in
            q, k, v = self._project(q_in, 0), self._project(k_in, 1), self._project(v_in, 2)
        use_dropout = self.dropout > 0 and dropout_key is not None
        weights = None
        if not use_dropout and not return_weights:
            mask = None if key_mask is None else key_mask[:, None, None, :]
            if bias is not None:
                bias = jnp.asarray(bias, q.dtype).reshape((-1, self.num_heads, q.shape[1], k.shape[1]))
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=self.implementation)
            if key_mask is not None:  # fully masked rows: zero instead of a uniform average of padding
                out = jnp.where(key_mask.any(-1)[:, None, None, None], out, 0)
        else:
            logits = jnp.einsum("bqhk,bthk->bhqt", q, k, preferred_element_type=jnp.float32)
            logits = logits / math.sqrt(self.head_dim)
            if bias is not None:
                logits = logits + bias
            mask = True if key_mask is None else key_mask[:, None, None, :]
            probs = masked_softmax(logits, mask)
            if return_weights:
                weights = probs.mean(axis=1)
            if use_dropout:
                keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout, probs.shape)
                probs = jnp.where(keep, probs / (1.0 - self.dropout), 0.0)
            out = jnp.einsum("bhqt,bthk->bqhk", probs.astype(self.dtype), v)
        w_out = self.out_proj["kernel"][...].astype(self.dtype)
        out = linear(out.reshape(*out.shape[:-2], -1), w_out.reshape(-1, w_out.shape[-1]))  # [B, Tq, H·Dh] @ [H·Dh, E]
        out = out + self.out_proj["bias"][...].astype(self.dtype)
        return (out, weights) if return_weights else out


class Mlp(nnx.Module):
    """timm Mlp: fc1 → exact (erf) GELU → fc2."""

    def __init__(self, dim, hidden, *, rngs, init, dtype=jnp.float32):
        self.fc1 = Dense(dim, hidden, rngs=rngs, axes=("embed", "mlp"), kernel_init=init, dtype=dtype)
        self.fc2 = Dense(hidden, dim, rngs=rngs, axes=("mlp", "embed"), kernel_init=init, dtype=dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """timm `Block`, pre-norm: x += attn(norm1(x)); x += mlp(norm2(x)). x: [B, T, dim].

    `eps` is 1e-6 in the ViT encoder (timm) and 1e-5 in GeoLink's decoder (nn.LayerNorm default). `init` is
    timm's trunc_normal(0.02) for encoder blocks and xavier_uniform for decoder blocks (spec §3.10)."""

    def __init__(self, dim, num_heads, mlp_ratio, *, rngs, eps, init, dtype=jnp.float32, attention_impl=None,
                 qkv_bias=True, attention_dropout=0.0, dropout=0.0, layer_scale=0.0):
        self.norm1 = LayerNorm(dim, eps=eps, axes=("embed",), dtype=dtype)
        # timm's qkv is one Linear(dim, 3*dim): fan-in dim, fan-out 3*dim for xavier; trunc-normal ignores fans.
        qkv_init = init if init is not None else xavier_uniform((0,), (1, 2, 3))
        self.attn = MultiHeadAttention(dim, num_heads, rngs=rngs, qkv_init=qkv_init,
                                       out_init=_flat_out_init(init), dtype=dtype, implementation=attention_impl,
                                       qkv_bias=qkv_bias, dropout=attention_dropout)
        self.norm2 = LayerNorm(dim, eps=eps, axes=("embed",), dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, init=init or xavier_uniform(), dtype=dtype)
        self.dropout = dropout  # on each branch's output before its residual add (HF ViT's hidden_dropout_prob)
        if layer_scale:  # timm LayerScale (init_values, DINOv2): each branch's output × a learned per-channel γ
            const = lambda key, shape, dtype=jnp.float32: jnp.full(shape, layer_scale, dtype)  # noqa: E731
            self.ls1 = nnx.Dict(gamma=param(rngs, const, (dim,), ("embed",)))
            self.ls2 = nnx.Dict(gamma=param(rngs, const, (dim,), ("embed",)))
        else:
            self.ls1 = self.ls2 = None

    def _scale(self, ls, y):
        return y if ls is None else y * ls["gamma"][...].astype(y.dtype)

    def __call__(self, x, attn_bias=None, dropout_key=None):
        """dropout_key: None (evaluation, teachers) or a key for the attention-probability and hidden dropouts."""
        k_attn, k_out, k_mlp = jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
        y = self._scale(self.ls1, self.attn(self.norm1(x), bias=attn_bias, dropout_key=k_attn))
        x = x + dropout(y, self.dropout, k_out)
        return x + dropout(self._scale(self.ls2, self.mlp(self.norm2(x))), self.dropout, k_mlp)


def dropout(x, rate, key):
    """Inverted dropout; the identity without a key or at rate 0."""
    if key is None or not rate:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _flat_out_init(init):
    """out_proj kernel [H, Dh, E] is a Linear(H*Dh → E): its fan-in spans the first two axes."""
    return init if init is not None else xavier_uniform((0, 1), (2,))
