"""Demo MAE pretraining: the GeoLink demo's image branch and recipe on the bundled tile images, on CPU, in a minute.

    geolink-jax pretrain --config mae_demo --workdir out/mae_demo
"""

from geolink_jax.config import base_config, load_file, transfer


def get_config(arg=None):
    return transfer(base_config("mae"), load_file("demo"))  # the GeoLink demo, by its name
