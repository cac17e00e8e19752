"""UperNet segmentation on the frozen GeoLink fusion extractor (spec §3.7, §3.9, §5.3): `geolink-jax finetune`.

The encoder is frozen (the reference's default `finetune=False`): its maps are computed under stop_gradient and
only the head's parameters and BatchNorm statistics change. Loss: pixel cross-entropy with ignore value 255 (the UFZ
maps' 9 and 255, spec §1.3), mean over the counted pixels as torch's CrossEntropyLoss(ignore_index=255). Optimizer
as the predecessor Rose's recipe: Adam with L2 weight decay 0.01 (torch Adam's coupled decay), poly decay power 0.9.
During training the fusion keys are a random subset of up to 50 nodes per tile, as the reference's `pad_node`;
evaluation takes the first 50 (deterministic). The reference leaves the frozen encoder in train mode, so its fusion
dropout (0.1) stays on while the head trains: `encoder_dropout=True` (default) does the same; False turns it off.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from geolink_jax.downstream import metrics
from geolink_jax.downstream.upernet import UperNet, UperNetConfig
from geolink_jax.tiles import downstream as tiles_lib


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 100
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    poly_power: float = 0.9
    channels: int = 512
    num_classes: int = 9
    dropout: float = 0.1
    seed: int = 0
    log_every: int = 10
    encoder_dropout: bool = True  # the reference's frozen encoder stays in train mode: fusion dropout on in training


def head_config(model_cfg, cfg: FinetuneConfig):
    """UperNet inputs: three ViT block maps (width) and the hybrid map (fusion_dim)."""
    w = model_cfg.vit.width
    return UperNetConfig(in_channels=(w, w, w, model_cfg.fusion_dim), num_classes=cfg.num_classes,
                         channels=cfg.channels, dropout=cfg.dropout)


def cross_entropy_ignore(logits, labels, ignore=tiles_lib.IGNORE):
    """logits float [B, H, W, K], labels int [B, H, W] → mean CE over pixels whose label != ignore (0 if none)."""
    valid = labels != ignore
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1)


class Segmenter:
    """Frozen GeoLink + trainable UperNet with jitted train and predict steps (static shapes: one compile each)."""

    def __init__(self, geolink, cfg: FinetuneConfig, head=None):
        self.cfg = cfg
        self.enc_graphdef, self.enc_params = nnx.split(geolink, nnx.Param)
        self.head = head or UperNet(head_config(geolink.cfg, cfg), rngs=nnx.Rngs(cfg.seed))
        self.head.train()
        self.train_graphdef, self.params, self.stats = nnx.split(self.head, nnx.Param, nnx.BatchStat)
        self.head.eval()
        self.eval_graphdef = nnx.graphdef(self.head)
        schedule = optax.polynomial_schedule(cfg.lr, 0.0, cfg.poly_power, max(cfg.steps, 1))
        self.tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.scale_by_adam(),
                              optax.scale_by_learning_rate(schedule))
        self.opt_state = self.tx.init(self.params)
        self._train = jax.jit(self._train_step, donate_argnums=(0, 1, 2))
        self._predict = jax.jit(self._predict_step)

    def _maps(self, enc_params, images, graph, key, dropout_key=None):
        model = nnx.merge(self.enc_graphdef, enc_params)
        return jax.lax.stop_gradient(model.extract(images, graph, key=key, dropout_key=dropout_key))

    def _train_step(self, params, stats, opt_state, enc_params, images, graph, labels, key):
        node_key, drop_key, enc_drop_key = jax.random.split(key, 3)
        maps = self._maps(enc_params, images, graph, node_key, enc_drop_key if self.cfg.encoder_dropout else None)

        def loss_fn(p, stats):
            # fresh variables for this trace: nnx variables are only mutable in the trace that made them
            head = nnx.merge(self.train_graphdef, p, jax.tree.map(lambda x: x, stats))
            logits = head(maps, images.shape[1:3], dropout_key=drop_key)
            return cross_entropy_ignore(logits, labels), nnx.state(head, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    def _predict_step(self, params, stats, enc_params, images, graph):
        head = nnx.merge(self.eval_graphdef, params, stats)
        return jnp.argmax(head(self._maps(enc_params, images, graph, None), images.shape[1:3]), axis=-1)

    def train_step(self, images, graph, labels, key):
        self.params, self.stats, self.opt_state, loss = self._train(
            self.params, self.stats, self.opt_state, self.enc_params, jnp.asarray(images),
            jax.tree.map(jnp.asarray, graph), jnp.asarray(labels), key)
        return loss

    def predict(self, images, graph):
        """→ int32 [B, H, W] class ids."""
        return self._predict(self.params, self.stats, self.enc_params, jnp.asarray(images),
                             jax.tree.map(jnp.asarray, graph))

    def head_module(self):
        """The trained head as an nnx module (eval mode)."""
        return nnx.merge(self.eval_graphdef, self.params, self.stats)


def evaluate(segmenter, tiles, batch_size, budget, class_names=None):
    """Predict every tile → (scores dict, predictions list of int32 [S, S])."""
    k = segmenter.cfg.num_classes
    conf = np.zeros((k, k), np.int64)
    preds = []
    for chunk, images, graph, labels in tiles_lib.batches(tiles, batch_size, budget):
        pred = np.asarray(segmenter.predict(images, graph))[:len(chunk)]
        preds += list(pred)
        if labels is not None:
            conf += np.asarray(metrics.confusion_matrix(pred, labels[:len(chunk)], k))
    return metrics.scores(conf, class_names), preds


def finetune(geolink, train_tiles, eval_tiles, cfg: FinetuneConfig, workdir=None, progress=True):
    """Train the head for cfg.steps on train_tiles (cycled in a seeded random order), evaluate on eval_tiles.

    Returns (segmenter, history [{step, loss}], scores). With a workdir: head.safetensors (reference SegUPerNet
    head names), metrics.jsonl, scores.json and segmentation.png."""
    from tqdm import tqdm

    from geolink_jax.convert import files
    from geolink_jax.convert import upernet as convert_upernet
    from geolink_jax.tiles.graph_batch import GraphBudget

    if not train_tiles or any(t.label is None for t in train_tiles):
        raise ValueError("finetune needs tiles with label maps (label/<name>.png or label_image in the records)")
    dim = train_tiles[0].graph.features["polygon"].shape[1]
    if dim != geolink.cfg.osm_in_features:
        raise ValueError(f"the tiles' node features are {dim}-d but the model takes {geolink.cfg.osm_in_features}-d "
                         "(preprocess the tiles with the encoder the model was pretrained with)")
    budget = GraphBudget.covering([t.graph for t in train_tiles + eval_tiles])
    seg = Segmenter(geolink, cfg)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    order, losses, history = [], [], []
    log = None
    if workdir:
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        log = open(workdir / "metrics.jsonl", "w")
    bar = tqdm(range(cfg.steps), desc="finetune", disable=not progress)
    for step in bar:
        if len(order) < cfg.batch_size:
            order += list(rng.permutation(len(train_tiles)))
        picked, order = [train_tiles[i] for i in order[:cfg.batch_size]], order[cfg.batch_size:]
        _, images, graph, labels = next(tiles_lib.batches(picked, cfg.batch_size, budget))
        # The loss stays on the device: reading it back every step would stall the asynchronous dispatch.
        losses.append(seg.train_step(images, graph, labels, jax.random.fold_in(key, step)))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history += [dict(step=len(history) + 1, loss=float(v)) for v in jax.device_get(losses[len(history):])]
            if log:
                log.write(json.dumps(history[-1]) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    if log:
        log.close()
    result, preds = evaluate(seg, eval_tiles, cfg.batch_size, budget,
                             metrics.UFZ_CLASSES if cfg.num_classes == len(metrics.UFZ_CLASSES) else None)
    if workdir:
        files.save_weights(convert_upernet.torch_state_dict(seg.head_module()), workdir / "head.safetensors",
                           model_config=dict(upernet=dataclasses.asdict(head_config(geolink.cfg, cfg))))
        (workdir / "scores.json").write_text(json.dumps(result, indent=1))
        from geolink_jax import pictures

        pictures.segmentation_figure([t.image for t in eval_tiles[:4]], [t.label for t in eval_tiles[:4]],
                                     preds[:4], result["classes"]).save(workdir / "segmentation.png")
    return seg, history, result
