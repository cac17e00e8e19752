"""Analytic FLOPs of a masked-autoencoder pretraining step (the image branch every ViT family builds on).

Counts matrix multiplications only (2·m·k·n each; elementwise work, softmax and norms are left out, as in the usual
MFU convention), per sample, forward; a training step is 3× forward (backward = 2× forward). The `step` bench suite
(geolink_jax/bench) cross-checks the total against XLA's `cost_analysis()` of the compiled step.
"""

import dataclasses

from geolink_jax.nn import masking


def block_flops(tokens, width, mlp_ratio):
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
    encoder = v.depth * block_flops(1 + keep, v.width, v.mlp_ratio)
    # decoder: embed the encoder tokens, blocks on all 1 + L tokens (mask tokens filled in), predict pixels
    decoder = (2 * (1 + keep) * v.width * cfg.decoder_width
               + cfg.decoder_depth * block_flops(1 + patches, cfg.decoder_width, cfg.mlp_ratio)
               + 2 * patches * cfg.decoder_width * patch_dim)
    return patch_embed, encoder, decoder


def mae_step_flops(cfg):
    """cfg: MAEConfig → StepFlops per sample (image branch only)."""
    return StepFlops(*image_forward_flops(cfg), graph=0.0, fusion=0.0, heads=0.0)
