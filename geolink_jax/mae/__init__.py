"""The MAE model family: image-only masked-autoencoder pretraining (GeoLink's unimodal baseline). The model is
geolink_jax.nn.mae."""
