"""The GAIR model family: Sentinel-2 patches + street-view photos + their locations, aligned by NILI queries of the
RS token grid (model.py; encoders.py, location.py, nili.py), its preprocessing job (preprocess.py), grain pipeline
and transforms (pipeline.py, augment.py), weights (convert.py), embeddings and picture (embed.py)."""
