"""Family-free model pieces (Flax NNX): layers, the ViT, masking, positions, losses, the MAE image branch,
partitioning (logical axes, activation constraints), Pillow-matching image ops for the step, FLOPs, config
dataclasses ↔ dicts. Imports nothing else of geolink_jax."""
