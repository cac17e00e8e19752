"""The GeoLink model (spec §3-§4) as one Flax NNX module, with static shapes throughout.

Submodule and parameter names follow the official PyTorch state_dict so a converter maps it one-to-one
(see `PARAMETER_NAMES` below). All randomness comes from the explicit `key` argument of `loss` (image masking,
node masking, the ≤10-node choice, attention dropout), so the module holds only parameters and a train step is
a pure function of (params, batch, key).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.geolink.fusion import TwoWayAttentionBlock
from geolink_jax.geolink.graph_network import GraphLayerNorm, HeteroGAT
from geolink_jax.geolink.readout import Set2Set, combine_type_slots
from geolink_jax.nn import layers, losses, masking, pos_embed
from geolink_jax.nn.mae import ImageMAE, MAEConfig
from geolink_jax.nn.vit import VIT_PRESETS, patchify
from geolink_jax.osm import NODE_TYPES

# One-line map from official state_dict names to ours; `*` is a layer index or node type, [T] a transpose.
PARAMETER_NAMES = """\
official (PyTorch)                                        geolink_jax (NNX path)
img_encoder.patch_embed.proj.weight [D,C,p,p]             img_encoder.patch_embed.proj.kernel [p,p,C,D] (permute 2,3,1,0)
  (patch_embed.proj.* is the same tensor registered twice)
img_encoder.blocks.*.norm1/norm2.weight|bias              img_encoder.blocks.*.norm1/norm2.scale|bias
img_encoder.blocks.*.attn.qkv.weight [3D,D] | bias [3D]   ...attn.in_proj.kernel [D,3,H,Dh] ([T] then reshape) | bias [3,H,Dh]
img_encoder.blocks.*.attn.proj.weight [D,D] | bias        ...attn.out_proj.kernel [H,Dh,D] ([T] then reshape) | bias
img_encoder.blocks.*.mlp.fc1|fc2.weight | bias            ...mlp.fc1|fc2.kernel [T] | bias
img_encoder.cls_token, .pos_embed, .norm.*                not used by GeoLink (timm's own; see spec §0)
cls_token [1,1,D]                                         cls_token
img_pos_embed, rec_img_pos_embed, fusion_img_pos_embed    fixed sin-cos tables, recomputed (pos_embed.image_table)
img_norm, img_decoder_norm                                 img_norm, img_decoder_norm (.scale|.bias)
img_decoder_mlp, img_decoder_pred                         same names (.kernel [T] | .bias)
img_mask_token [1,1,512]                                  img_mask_token
img_cross_modal_decoder.*  (timm Block)                   img_cross_modal_decoder.*  (as the encoder blocks)
osm_encoder.convs.0.convs.<s>__to__<d>.lin.weight         osm_encoder.convs.<s>_to_<d>.lin.kernel [T]
osm_encoder.convs.0.convs.<s>__to__<d>.att_src|att_dst    osm_encoder.convs.<s>_to_<d>.att_src|att_dst [C] (from [1,1,C])
osm_encoder.convs.0.convs.<s>__to__<d>.bias               osm_encoder.convs.<s>_to_<d>.bias
osm_norm.<t>.weight|bias  (PyG graph LayerNorm)           osm_norm.<t>.scale|bias
osm_mask_token.<t> [1,512]                                osm_mask_token.<t>
osm_read_out.<t>.lstm.weight_ih_l0|weight_hh_l0            osm_read_out.<t>.lstm.weight_ih|weight_hh [T]
osm_read_out.<t>.lstm.bias_ih_l0|bias_hh_l0               osm_read_out.<t>.lstm.bias_ih|bias_hh
osm_aggr_mlp.<t>, type_attention                           same names (.kernel [T] | .bias)
osm_graph_consistency_prj, img_consistency_prj             same names
img_fusion_mlp, osm_node_fusion_mlp.<t>, osm_node_pred     same names
osm_cross_modal_encoder.*.self_attn.in_proj_weight|bias   osm_cross_modal_encoder.*.self_attn.in_proj.kernel [T, reshape E,3,H,Dh]|bias
osm_cross_modal_encoder.*.<attn>.out_proj.weight|bias     ...<attn>.out_proj.kernel [T, reshape H,Dh,E]|bias
  <attn> in self_attn, cross_attn_token_to_image, cross_attn_image_to_token
osm_cross_modal_encoder.*.norm1..norm4, .mlp              same names
"""  # noqa: E501 - a table wider than the code


@dataclasses.dataclass(frozen=True)
class GeoLinkConfig(MAEConfig):
    """Every GeoLink hyperparameter; defaults are the reference's (spec §3, §4).

    Deviation flags (all off by default): graph_norm='per_graph' (batch-independent node norm), global_negatives
    (InfoNCE negatives gathered from the whole batch rather than each per-device batch),
    type_softmax_over_slots (a real softmax over the type slots), round_type_slots_bf16=False (keep the
    float32 graph embedding the reference rounds to bf16)."""

    osm_in_features: int = 512
    osm_hidden: int = 128
    graph_embed_dim: int = 128
    fusion_dim: int = 256
    contrastive_dim: int = 64
    fusion_depth: int = 1
    fusion_heads: int = 16
    fusion_dropout: float = 0.1
    osm_mask_ratio: float = 0.2
    max_masked_nodes: int = 10
    max_fusion_nodes: int = 50
    set2set_steps: int = 5
    temperature: float = 0.2
    loss_weights: tuple = (1.0, 1.0, 1.0)  # image reconstruction, contrastive, node reconstruction
    graph_norm: str = "graph"
    global_negatives: bool = False  # contrastive negatives from the whole global batch instead of per group
    type_softmax_over_slots: bool = False
    round_type_slots_bf16: bool = True

    @classmethod
    def from_dict(cls, d):
        """From a mapping; `vit` may also be a preset name, with image_size/in_channels/patch_size beside it."""
        from geolink_jax.nn.config_dict import config_from_dict

        d = dict(d)
        vit = d.pop("vit", "L")
        if isinstance(vit, str):
            sizes = {k: d.pop(k) for k in ("image_size", "in_channels", "patch_size") if k in d}
            vit = dataclasses.replace(VIT_PRESETS[vit], **sizes)
        return config_from_dict(cls, dict(d, vit=vit))

    def default_extract_layers(self):
        """0-based blocks feeding the downstream maps: (7, 11, 15, 23) for depth 24, proportional otherwise."""
        depth = self.vit.depth
        return tuple(max(0, round(depth * f) - 1) for f in (8 / 24, 12 / 24, 16 / 24, 1.0))


class GeoLink(ImageMAE):
    """Sparse masked ViT + typed-relation OSM GAT + Set2Set readout + cross-modal fusion block.

    Inputs everywhere: images float [B, H, W, C] (ImageNet-normalised, NHWC) and a GraphBatch whose node
    features are [B, N_t, osm_in_features] (positions travel separately in graph.positions).
    """

    def __init__(self, cfg: GeoLinkConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)  # the image branch first: parameter init order as the reference
        dt = jnp.dtype(cfg.dtype)
        d = cfg.vit.width
        h, f_in = cfg.osm_hidden, cfg.osm_in_features
        self.osm_encoder = HeteroGAT(f_in, h, rngs=rngs, dtype=dt)
        self.osm_norm = nnx.Dict({t: GraphLayerNorm(h, mode=cfg.graph_norm) for t in NODE_TYPES})
        self.osm_mask_token = nnx.Dict({
            t: layers.param(rngs, layers.normal(0.02), (1, f_in), (None, "node_in")) for t in NODE_TYPES})
        self.osm_read_out = nnx.Dict({t: Set2Set(h, cfg.set2set_steps, rngs=rngs) for t in NODE_TYPES})
        g = cfg.graph_embed_dim
        self.osm_aggr_mlp = nnx.Dict({
            t: layers.Dense(2 * h, g, rngs=rngs, axes=(None, "node_hidden")) for t in NODE_TYPES})
        self.type_attention = layers.Dense(g, 1, rngs=rngs, axes=("node_hidden", None))
        c = cfg.contrastive_dim
        self.osm_graph_consistency_prj = layers.Dense(g, c, rngs=rngs, axes=("node_hidden", "proj"))
        self.img_consistency_prj = layers.Dense(d, c, rngs=rngs, axes=("embed", "proj"))

        fd = cfg.fusion_dim
        self.img_fusion_mlp = layers.Dense(d, fd, rngs=rngs, axes=("embed", "embed_out"), dtype=dt)
        self.osm_node_fusion_mlp = nnx.Dict({
            t: layers.Dense(h, fd, rngs=rngs, axes=("node_hidden", "embed"), dtype=dt) for t in NODE_TYPES})
        self.osm_cross_modal_encoder = nnx.List([
            TwoWayAttentionBlock(fd, cfg.fusion_heads, rngs=rngs, dropout=cfg.fusion_dropout, dtype=dt)
            for _ in range(cfg.fusion_depth)
        ])
        self.osm_node_pred = layers.Dense(fd, f_in, rngs=rngs, axes=("embed", "node_in"), dtype=dt)

    # ------------------------------------------------------------------ graph branch
    def encode_graph(self, graph, key=None, mask_ratio=None, groups=1):
        """Node masking + GAT + ReLU + graph-mode LayerNorm (spec §3.3, §4.2).

        Returns (embeddings {t: float32 [B, N_t, hidden]}, masked {t: bool [B, N_t]}). key None or mask_ratio 0:
        no node is masked. groups: normalisation groups of the graph LayerNorm (see graph_layer_norm_stats)."""
        mask_ratio = self.cfg.osm_mask_ratio if mask_ratio is None else mask_ratio
        keys = jax.random.split(key, len(NODE_TYPES)) if key is not None else [None] * len(NODE_TYPES)
        inputs, masked = {}, {}
        for t, k in zip(NODE_TYPES, keys):
            valid = graph.node_mask(t)
            x = graph.nodes[t]
            if k is not None and mask_ratio > 0:
                masked[t] = masking.node_mask(k, valid, mask_ratio)
                x = jnp.where(masked[t][..., None], self.osm_mask_token[t][...].astype(x.dtype), x)
            else:
                masked[t] = jnp.zeros_like(valid)
            inputs[t] = x
        out = self.osm_encoder(inputs, graph)
        emb = {t: self.osm_norm[t](out[t], graph.node_mask(t), groups) for t in NODE_TYPES}
        return emb, masked

    def graph_embedding(self, embeddings, graph):
        """Set2Set per type → osm_aggr_mlp → type slots → combined graph embedding float32 [B, graph_embed_dim]."""
        slots, present = [], []
        for t in NODE_TYPES:
            valid = graph.node_mask(t)
            has = valid.any(axis=1)
            z = self.osm_aggr_mlp[t](self.osm_read_out[t](embeddings[t], valid))
            slots.append(jnp.where(has[:, None], z, 0.0))
            present.append(has)
        slots = jnp.stack(slots, axis=1)  # [B, 3, C], slot order polygon, line, point
        if self.cfg.round_type_slots_bf16:  # the reference's bf16 buffer
            slots = slots.astype(jnp.bfloat16).astype(jnp.float32)
        return combine_type_slots(slots, jnp.stack(present, axis=1), self.type_attention,
                                  self.cfg.type_softmax_over_slots)

    def _node_tokens(self, embeddings, graph, grid):
        """All nodes of all types, concatenated type-major along one node axis M = ΣN_t:
        fusion tokens [B, M, fd], position embeddings float32 [B, M, fd], original features [B, M, F]."""
        gh, gw = grid
        tokens, pes, feats = [], [], []
        for t in NODE_TYPES:
            tokens.append(self.osm_node_fusion_mlp[t](embeddings[t]))
            pes.append(pos_embed.node_embedding(graph.positions[t], self.cfg.fusion_dim, gh, gw))
            feats.append(graph.nodes[t])
        return jnp.concatenate(tokens, 1), jnp.concatenate(pes, 1), jnp.concatenate(feats, 1)

    def _fuse(self, image, image_pe, nodes, node_pe, node_valid, dropout_key=None):
        keys = (jax.random.split(dropout_key, len(self.osm_cross_modal_encoder)) if dropout_key is not None
                else [None] * len(self.osm_cross_modal_encoder))
        out_nodes = nodes
        for block, k in zip(self.osm_cross_modal_encoder, keys):
            # As the reference: the image tokens chain through the blocks, but every block starts again from the
            # initial node tokens (only the last block's node output is used). Identical for depth 1.
            image, out_nodes = block(image, nodes, image_pe, node_pe, node_valid, dropout_key=k)
        return image, out_nodes

    # ------------------------------------------------------------------ pretraining loss
    def loss(self, images, graph, key, *, train=True, batch_groups=1, return_outputs=False):
        """The three GeoLink losses (spec §4) and their weighted sum.

        images [B, H, W, C]; graph: GraphBatch; key: a PRNG key (all randomness of the step); batch_groups: number
        of equal batch slices that keep their own graph-norm statistics and contrastive negatives (the
        reference's per-GPU batches: the trainer passes the number of per-device batches; 1 = the whole batch;
        cfg.global_negatives uses the whole batch for the negatives whatever the groups). Returns (total,
        aux): aux has the losses, metrics and, if return_outputs, pred [B, L, p·p·C], mask [B, L] and the
        node-selection arrays."""
        cfg = self.cfg
        k_img, k_node, k_select, k_drop = jax.random.split(key, 4)
        enc = self.encode_image(images, k_img)
        tokens = enc["tokens"]
        pred = self.decode_image(tokens, enc["ids_restore"], enc["grid"])
        target = patchify(images, cfg.vit.patch_size)
        img_loss = losses.image_reconstruction_loss(pred, target, enc["mask"], cfg.norm_pix_loss)

        emb, masked = self.encode_graph(graph, k_node, groups=batch_groups)
        has_nodes = jnp.stack([graph.node_mask(t).any(1) for t in NODE_TYPES], 1).any(1)
        g = self.graph_embedding(emb, graph)
        visible = tokens[:, 1:]
        z_img = self.img_consistency_prj(visible.astype(jnp.float32).mean(axis=1))
        z_graph = self.osm_graph_consistency_prj(g)
        con_groups = 1 if cfg.global_negatives else batch_groups
        con_loss, con_acc = losses.contrastive_loss(z_img, z_graph, has_nodes, cfg.temperature, con_groups)

        node_tokens, node_pe, node_feats = self._node_tokens(emb, graph, enc["grid"])
        candidates = jnp.concatenate([masked[t] for t in NODE_TYPES], axis=1)
        idx, sel_valid = masking.select_nodes(k_select, candidates, cfg.max_masked_nodes)
        sel_tokens = masking.gather_tokens(node_tokens, idx)
        sel_pe = masking.gather_tokens(node_pe, idx)
        sel_labels = masking.gather_tokens(node_feats, idx)
        image_q = self.img_fusion_mlp(visible)
        table = pos_embed.image_table(cfg.fusion_dim, *enc["grid"])[1:]
        image_pe = jnp.asarray(table)[enc["ids_keep"]]
        _, fused_nodes = self._fuse(image_q, image_pe, sel_tokens, sel_pe, sel_valid, k_drop if train else None)
        node_pred = self.osm_node_pred(fused_nodes)
        node_loss = losses.node_reconstruction_loss(node_pred, sel_labels, sel_valid)

        w_img, w_con, w_node = cfg.loss_weights
        total = w_img * img_loss + w_con * con_loss + w_node * node_loss
        aux = dict(
            img_loss=img_loss, contrastive_loss=con_loss, node_loss=node_loss, loss=total,
            contrastive_accuracy=con_acc,
            masked_nodes_per_sample=sel_valid.sum(1).astype(jnp.float32).mean(),
            samples_without_nodes=(~has_nodes).sum(),
        )
        if return_outputs:
            aux.update(pred=pred, mask=enc["mask"], node_index=idx, node_valid=sel_valid, node_pred=node_pred)
        return total, aux

    # ------------------------------------------------------------------ downstream
    def extract(self, images, graph, layers_=None, key=None, batch_groups=1, return_attention=False,
                dropout_key=None):
        """Downstream feature maps (spec §3.7, `GeoLink_Fusion_Embedding`).

        Runs the encoder unmasked, returns [B, H/p, W/p, D] maps of the raw outputs (no norm) of the 0-based
        blocks `layers_` (default cfg.default_extract_layers()) except the last, plus the hybrid map
        [B, H/p, W/p, fusion_dim]: the fusion block's updated image tokens, with queries img_fusion_mlp(img_norm(
        tokens after the last of `layers_`)) and keys up to max_fusion_nodes nodes per sample of the unmasked
        graph (the first ones in type-major order; a random subset when `key` is given, as the reference).
        No dropout unless `dropout_key` is given (the reference's frozen extractor left in train mode keeps the fusion
        block's dropout on). return_attention adds the node→image attention [B, K, L] and the chosen node slots."""
        cfg = self.cfg
        layers_ = tuple(layers_ or cfg.default_extract_layers())
        x, grid = self._embed_patches(images)
        x = self._with_cls(x)
        after = {}
        for i, block in enumerate(self.img_encoder.blocks):
            if i > max(layers_):
                break  # later blocks feed nothing
            x = block(x)
            if i in layers_:
                after[i] = x[:, 1:]
        gh, gw = grid
        maps = [after[i].reshape(x.shape[0], gh, gw, x.shape[-1]) for i in layers_[:-1]]

        emb, _ = self.encode_graph(graph, None, groups=batch_groups)
        node_tokens, node_pe, _ = self._node_tokens(emb, graph, grid)
        candidates = jnp.concatenate([graph.node_mask(t) for t in NODE_TYPES], axis=1)
        idx, valid = masking.select_nodes(key, candidates, cfg.max_fusion_nodes)
        image_q = self.img_fusion_mlp(self.img_norm(after[layers_[-1]]))
        image_pe = jnp.asarray(pos_embed.image_table(cfg.fusion_dim, gh, gw)[1:])[None]
        nodes, pe = masking.gather_tokens(node_tokens, idx), masking.gather_tokens(node_pe, idx)
        attention = None
        for j, block in enumerate(self.osm_cross_modal_encoder):
            # As the reference: every block sees the initial image queries and node tokens (identical for depth 1).
            last = j == len(self.osm_cross_modal_encoder) - 1
            drop = None if dropout_key is None else jax.random.fold_in(dropout_key, j)
            out = block(image_q, nodes, image_pe, pe, valid, dropout_key=drop,
                        return_attention=return_attention and last)
            hybrid = out[0]
            if return_attention and last:
                attention = out[2]
        maps.append(hybrid.reshape(hybrid.shape[0], gh, gw, -1))
        if return_attention:
            return maps, dict(attention=attention, node_index=idx, node_valid=valid)
        return maps
