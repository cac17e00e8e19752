"""The GeoLink demo (named config `demo`, geolink_jax/geolink/configs/demo.py), as a file to copy and edit.

    geolink-jax pretrain --config configs/demo.py --workdir out/demo
"""

from geolink_jax.geolink.configs.demo import get_config  # noqa: F401
