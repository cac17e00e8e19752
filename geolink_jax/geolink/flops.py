"""Analytic FLOPs of a GeoLink pretraining step (per sample; see `nn.flops` for the convention). The graph terms
count the padded budget the compiled step actually runs on."""

from geolink_jax.nn import masking
from geolink_jax.nn.flops import StepFlops, image_forward_flops
from geolink_jax.osm import RELATIONS


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
