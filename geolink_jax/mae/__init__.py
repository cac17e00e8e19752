"""The MAE model family: image-only masked-autoencoder pretraining (GeoLink's unimodal baseline) on the tile
images. The model is the family-free image branch, geolink_jax.nn.mae."""
