"""Analytic FLOPs of a GeoLink or MAE pretraining step, and peak FLOP/s per device kind (for MFU).

Counts matrix multiplications only (2·m·k·n each; elementwise work, softmax and norms are left out, as in the usual
MFU convention), per sample, forward; a training step is 3× forward (backward = 2× forward). The graph terms count
the padded budget the compiled step actually runs on. the `step` bench suite (geolink_jax/bench) cross-checks the total against XLA's
`cost_analysis()` of the compiled step.
"""

import dataclasses

from geolink_jax.models import masking
from geolink_jax.osm import RELATIONS


def _block(tokens, width, mlp_ratio):
    """One pre-norm transformer block on `tokens` tokens: qkv + out projections, QKᵀ and AV, the 2-layer MLP."""
    hidden = int(width * mlp_ratio)
    return 2 * tokens * (4 * width * width + 2 * width * hidden) + 4 * tokens * tokens * width


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Forward FLOPs per sample by part; `train_step` = 3 × the sum (forward + backward)."""
    patch_embed: float
    encoder: float
    decoder: float
    graph: float
    fusion: float
    heads: float

    @property
    def forward(self):
        return self.patch_embed + self.encoder + self.decoder + self.graph + self.fusion + self.heads

    @property
    def train_step(self):
        return 3 * self.forward


def image_forward_flops(cfg):
    """(patch_embed, encoder, decoder) forward FLOPs per sample of the masked image branch (MAEConfig fields)."""
    v = cfg.vit
    patches = v.num_patches
    keep = masking.num_kept_tokens(patches, cfg.img_mask_ratio)
    patch_dim = v.patch_size ** 2 * v.in_channels
    patch_embed = 2 * patches * patch_dim * v.width
    encoder = v.depth * _block(1 + keep, v.width, v.mlp_ratio)
    # decoder: embed the encoder tokens, blocks on all 1 + L tokens (mask tokens filled in), predict pixels
    decoder = (2 * (1 + keep) * v.width * cfg.decoder_width
               + cfg.decoder_depth * _block(1 + patches, cfg.decoder_width, cfg.mlp_ratio)
               + 2 * patches * cfg.decoder_width * patch_dim)
    return patch_embed, encoder, decoder


def mae_step_flops(cfg):
    """cfg: MAEConfig → StepFlops per sample (image branch only)."""
    return StepFlops(*image_forward_flops(cfg), graph=0.0, fusion=0.0, heads=0.0)


def geolink_step_flops(cfg, node_budget, max_masked_nodes=None):
    """cfg: GeoLinkConfig; node_budget: {node type: padded nodes per sample}. Returns StepFlops (per sample)."""
    v = cfg.vit
    keep = masking.num_kept_tokens(v.num_patches, cfg.img_mask_ratio)
    patch_embed, encoder, decoder = image_forward_flops(cfg)
    # typed-relation GAT: each relation projects its source and destination nodes (in → hidden)
    graph = sum(2 * (node_budget[s] + node_budget[d]) * cfg.osm_in_features * cfg.osm_hidden for s, d in RELATIONS)
    # Set2Set readout per type (LSTM(2h → h), set2set_steps steps, on one query per sample) + per-type MLP 2h → g
    h, g = cfg.osm_hidden, cfg.graph_embed_dim
    graph += len(node_budget) * (cfg.set2set_steps * 2 * (2 * h + h) * 4 * h + 2 * 2 * h * g)
    # fusion: image tokens → fusion width; ≤K masked nodes → fusion width; one two-way block per depth
    k = max_masked_nodes or cfg.max_masked_nodes
    f = cfg.fusion_dim
    fusion = 2 * keep * v.width * f + 2 * k * h * f
    def attention(tq, tk):  # q/out projections on the queries, k/v on the keys, QKᵀ and AV
        return 2 * tq * 2 * f * f + 2 * tk * 2 * f * f + 4 * tq * tk * f

    per_block = (attention(k, k)  # node self-attention
                 + attention(keep, k) + attention(k, keep)  # image→node and node→image cross attention
                 + 2 * k * f * f)  # node Linear
    fusion += cfg.fusion_depth * per_block
    heads = 2 * k * f * cfg.osm_in_features + 2 * (v.width + g) * cfg.contrastive_dim
    return StepFlops(patch_embed, encoder, decoder, graph, fusion, heads)


# Dense peak FLOP/s per device (vendor datasheets; SXM parts). float32 on NVIDIA tensor cores means TF32, which is
# what XLA uses for float32 matmuls at the default precision on Ampere and later.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989.4e12, ("H100", "float32"): 494.7e12,
    ("H200", "bfloat16"): 989.4e12, ("H200", "float32"): 494.7e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 156e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5p", "bfloat16"): 459e12, ("TPU v5 lite", "bfloat16"): 197e12,
}


def peak_flops(device_kind, dtype):
    """Peak FLOP/s of one device of `device_kind` at `dtype`, or None when unknown (CPUs, unlisted parts)."""
    for (kind, dt), peak in PEAK_FLOPS.items():
        if kind.lower() in device_kind.lower() and dt == dtype:
            return peak
    return None
