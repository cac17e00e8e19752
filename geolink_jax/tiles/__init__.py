"""The image + OSM tile dataset (GeoLink and MAE train on it): tile sources, the tile job (`job.py`) and its Beam
pipeline, the grain tile pipeline, host and on-device augmentation, padded graph batches, the downstream tile
reader and the preprocess command. Knows no family."""
