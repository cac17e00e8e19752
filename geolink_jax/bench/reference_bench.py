"""Side by side with the official PyTorch GeoLink (suite `reference`).

    git clone https://github.com/bailubin/GeoLink_NeurIPS2025 /path/to/GeoLink_NeurIPS2025
    pip install -e '.[test]'     # torch, timm, torch_geometric
    geolink-jax bench --suite cpu --only reference --reference-repo /path/to/GeoLink_NeurIPS2025

Nothing of the official repository is copied here: its `model` package is imported from the checkout you name.
Both sides run one training step on the same config (encoder and head sizes from the geolink_jax config), the same
batch (the bundled UFZ graphs as PyG HeteroData, the same random images) and the same optimizer recipe (AdamW with
the config's lr, betas and weight decay on ≥2-D weights, global-norm clipping), in this process, interleaved:
- geolink_jax: the jitted train step (`trainer.Setup.step_fn`), graphs padded to the default budget;
- official: `GeoLink.forward` (its losses summed) → backward → clip → AdamW step, on a freshly collated batch each
  step (collation is the data loader's job and is not timed).
Ratio: official median / geolink_jax median (target ≥ 2 for ViT-B, batch 4, float32 on CPU).

One runtime adjustment, for float32 only: the official `osm_aggregation` allocates its per-type slot buffer as
bfloat16 (it was run under bf16 autocast), and writing float32 slots into it fails. For float32 the buffer is made
float32 (a shim on that module's `torch.zeros`; the model code is untouched). For bfloat16 the official step runs
under `torch.autocast(dtype=torch.bfloat16)` as-is.
"""

import importlib
import importlib.util
import pathlib
import sys
import time
import types

import numpy as np

from geolink_jax.bench import rows
from geolink_jax.bench.model_step_bench import StepRunner
from geolink_jax.osm import NODE_TYPES, RELATIONS, osm_graph, relation_name


class OfficialModelError(RuntimeError):
    pass


def import_official(repo):
    """The official `model.ImgOsmHeter` module from a checkout at `repo`."""
    repo = pathlib.Path(repo).expanduser().resolve()
    if not (repo / "model" / "ImgOsmHeter.py").is_file():
        raise OfficialModelError(f"{repo}: not a GeoLink_NeurIPS2025 checkout (no model/ImgOsmHeter.py)")
    missing = [m for m in ("torch", "timm", "torch_geometric") if importlib.util.find_spec(m) is None]
    if missing:
        raise OfficialModelError(f"the official model needs {missing}: pip install -e '.[test]'")
    loaded = sys.modules.get("model.ImgOsmHeter")
    if loaded is not None:  # a second run in this process: reuse it if it came from the same checkout
        if pathlib.Path(loaded.__file__).resolve().is_relative_to(repo):
            return loaded
        raise OfficialModelError(f"the official model was already imported from {loaded.__file__}, not {repo}")
    for name in ("model", "util"):  # the checkout's top-level packages; no other modules may shadow them
        mod = sys.modules.get(name)
        paths = [getattr(mod, "__file__", None) or "", *getattr(mod, "__path__", [])] if mod else []
        if mod is not None and not any(str(p).startswith(str(repo)) for p in paths if p):
            raise OfficialModelError(f"a different top-level '{name}' module is already imported ({paths})")
    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module("model.ImgOsmHeter")
    finally:
        sys.path.remove(str(repo))


def _float32_slots(module):
    """Make the official module's bfloat16 `torch.zeros` allocations float32 (see the module docstring)."""
    import torch

    class TorchFloat32Slots(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, dtype=None, **kwargs):
            return torch.zeros(*args, dtype=torch.float32 if dtype is torch.bfloat16 else dtype, **kwargs)

    module.torch = TorchFloat32Slots("torch")


def official_model(module, model_cfg):
    """The official GeoLink with the encoder and head sizes of a GeoLinkConfig."""
    import timm

    v = model_cfg.vit
    encoder = timm.models.vision_transformer.VisionTransformer(
        img_size=v.image_size, patch_size=v.patch_size, in_chans=v.in_channels, embed_dim=v.width, depth=v.depth,
        num_heads=v.num_heads, mlp_ratio=v.mlp_ratio, qkv_bias=True, num_classes=0, global_pool="")
    if model_cfg.osm_in_features != 512:
        raise OfficialModelError(f"the official GNN takes 512-d tag features, the config has "
                                 f"{model_cfg.osm_in_features}")
    return module.GeoLink(
        encoder, module.OSMHeteroGAT(out_chans=model_cfg.osm_hidden), img_in_chans=v.in_channels,
        osm_out_embed_dim=model_cfg.osm_hidden, graph_aggr_embed_dim=model_cfg.graph_embed_dim,
        fusion_embed_dim=model_cfg.fusion_dim, img_decoder_embed_dim=model_cfg.decoder_width,
        consistency_embed_dim=model_cfg.contrastive_dim, img_decoder_depth=model_cfg.decoder_depth,
        img_decoder_num_heads=model_cfg.decoder_heads, osm_cross_modal_encoder_depth=model_cfg.fusion_depth,
        osm_cross_modal_encoder_num_heads=model_cfg.fusion_heads, mlp_ratio=model_cfg.mlp_ratio,
        norm_pix_loss=model_cfg.norm_pix_loss)


def hetero_data(graph):
    """A TileGraph → the official HeteroData form: x = [tag features | positions], 9 typed edge sets."""
    import torch
    from torch_geometric.data import HeteroData

    d = HeteroData()
    for t in NODE_TYPES:
        d[t].x = torch.from_numpy(np.concatenate([graph.features[t], graph.positions[t]], 1).astype(np.float32))
    for s, t in RELATIONS:
        r = relation_name(s, t)
        d[s, "to", t].edge_index = torch.from_numpy(np.asarray(graph.edge_index[r], np.int64).reshape(2, -1).copy())
        d[s, "to", t].edge_attr = torch.from_numpy(np.asarray(graph.edge_attr[r], np.float32).copy())
    return d


class OfficialStep:
    """One official training step per call on the same images and graphs."""

    def __init__(self, module, model_cfg, optim_cfg, images_nhwc, graphs, dtype, device):
        import torch
        from torch_geometric.data import Batch

        if dtype == "float32":
            _float32_slots(module)
        self.torch, self.device, self.dtype = torch, device, dtype
        self.model = official_model(module, model_cfg).to(device).train()
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        self.opt = torch.optim.AdamW([dict(params=decay, weight_decay=optim_cfg.weight_decay),
                                      dict(params=no_decay, weight_decay=0.0)],
                                     lr=optim_cfg.lr, betas=(optim_cfg.b1, optim_cfg.b2))
        self.clip = optim_cfg.clip_norm
        self.images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(device)
        self.datas = [hetero_data(g) for g in graphs]
        self._collate = lambda: Batch.from_data_list(self.datas).to(device)
        self.num_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.losses = []
        self.step()  # warm-up

    def step(self):
        torch = self.torch
        batch = self._collate()  # forward() strips the positions off x in place, so each step needs a fresh batch
        if self.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            img_loss, graph_loss, node_loss = self.model(self.images, batch)[:3]
            loss = img_loss + graph_loss + node_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        if self.device != "cpu":
            torch.cuda.synchronize()
        self.losses.append(float(loss.detach()))
        return time.perf_counter() - t0


def run(cfg):
    flat = rows.flatten(cfg)
    name = cfg.get("name") or f"{cfg.config} b{cfg.batch} {cfg.dtype} vs official"
    if not cfg.get("reference_repo"):
        return rows.skipped_row("reference", name, flat, "no reference checkout given (--reference-repo PATH)")
    import jax
    import torch

    module = import_official(cfg.reference_repo)
    ours = StepRunner(cfg)
    graphs = (osm_graph.sample_ufz_graphs() * cfg.batch)[: cfg.batch]  # the graphs ours.host holds, unpadded
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    theirs = OfficialStep(module, ours.setup.model_cfg, ours.config.optim, ours.host["image"], graphs, cfg.dtype,
                          device)
    row = rows.new_row("reference", name, flat)
    times = {"geolink_jax": [], "official": []}
    for _ in range(cfg.repeats):
        times["geolink_jax"].append(ours.step())
        times["official"].append(theirs.step())
    for k, t in times.items():
        row["times_s"][k] = rows.stats(t)
    m = row["metrics"]
    m.update(batch=cfg.batch, official_params=theirs.num_params, torch=torch.__version__,
             torch_threads=torch.get_num_threads(), official_device=device, official_last_loss=theirs.losses[-1],
             geolink_jax_compile_s=ours.compile_s, model_flops_per_step=ours.model_flops)
    if not np.isfinite(theirs.losses).all():
        raise OfficialModelError(f"the official step gave non-finite losses {theirs.losses}")
    rows.ratio(row, "speedup_vs_official", "times_s.official.median", "times_s.geolink_jax.median",
               target=cfg.get("target") or None, op=">=")
    return row
