"""The tile record: one ArrayRecord record per tile, msgpack-encoded, versioned.

Format ``geolink_jax.tile`` version 1. A record is a msgpack map with these keys (arrays are msgpack extension
type 1 holding ``{dtype, shape, little-endian bytes}``, so decoding needs only numpy + msgpack):

=====================================  ===========================  ===============================================
key                                    type                         meaning
=====================================  ===========================  ===============================================
``format``, ``version``                str, int                     ``"geolink_jax.tile"``, 1
``tile_id``                            str                          tile name (file stem)
``image``                              bytes                        encoded 8-bit RGB image: as given (JPEG/PNG) or
                                                                    by the image rule (`image_rule`) as PNG
``image_format``                       str                          ``jpeg`` | ``png`` (``npy``: raw bands, for
                                                                    families that take them)
``image_size``                         int32 [2]                    (height, width) in pixels
``bbox_lonlat``                        float64 [4]                  (west, south, east, north), EPSG:4326
``crs``                                str                          CRS the graph was built in (positions are
                                                                    normalised to the tile in that CRS)
``x_<type>``                           float32 [N_t, D]             tag features, type ∈ polygon, line, point
``pos_<type>``                         float32 [N_t, 8|6|2]         normalised positions (y top-down), spec §1.1
``labels_<type>``                      list[str] [N_t]              tag labels ``key:value;…`` ('' if unknown)
``edge_index_<src>_to_<dst>``          int32 [2, E]                 (src row, dst row), the 9 relations
``edge_attr_<src>_to_<dst>``           uint8 [E, d]                 relation one-hot (the model ignores it)
``label_image``, ``label_format``      bytes, str (optional)        per-pixel class map (downstream tiles)
``meta``                               map                          encoder spec, source files, notes;
                                                                    ``image``: the rule applied to a raster
                                                                    (dtype, bands, stretch, bounds);
                                                                    ``footprint: "unknown"`` when bbox_lonlat is
                                                                    a placeholder (UFZ tiles without a sidecar)
=====================================  ===========================  ===============================================

Empty node types have shape [0, D]; image-only tiles have all types empty. The encoder and feature width are the
same for every record of a shard set and are recorded in its manifest.
"""
import io

import msgpack
import numpy as np

FORMAT = "geolink_jax.tile"
VERSION = 1
_ARRAY_EXT = 1


class RecordFormatError(ValueError):
    """A record that is not a geolink_jax tile record of a supported version."""


def _default(obj):
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        payload = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()], use_bin_type=True)
        return msgpack.ExtType(_ARRAY_EXT, payload)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a tile record")


def _ext_hook(code, data):
    if code != _ARRAY_EXT:
        raise RecordFormatError(f"unknown msgpack extension type {code}")
    dtype, shape, raw = msgpack.unpackb(data, raw=False)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)  # read-only views of the record's bytes


def encode(record, fmt=FORMAT, version=VERSION):
    """dict → bytes. Adds format and version (other families' records name their own format)."""
    return msgpack.packb({"format": fmt, "version": version, **record}, default=_default, use_bin_type=True)


def decode(data, fmt=FORMAT, version=VERSION):
    """bytes → dict of numpy arrays / python values. Raises RecordFormatError for foreign or newer records."""
    try:
        record = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (msgpack.exceptions.ExtraData, ValueError) as e:
        raise RecordFormatError(f"not a msgpack {fmt} record: {e}") from e
    if not isinstance(record, dict) or record.get("format") != fmt:
        found = record.get("format") if isinstance(record, dict) else None
        raise RecordFormatError(f"not a {fmt} record" + (f" (a {found} record)" if found else ""))
    if record.get("version") != version:
        raise RecordFormatError(f"{fmt} record version {record.get('version')} is not supported (expected {version})")
    return record


def open_image(record):
    """The record's image, not yet decoded: a lazy PIL image (JPEG/PNG; size known, pixels decoded on first use, so
    a JPEG can still be `draft`-decoded at a reduced DCT scale) or, for ``npy``, the array [H, W, C]."""
    if record["image_format"] == "npy":
        return np.load(io.BytesIO(record["image"]))
    from PIL import Image

    return Image.open(io.BytesIO(record["image"]))


def decode_image(record):
    """The record's image as uint8/float array [H, W, C] (RGB for encoded images)."""
    image = open_image(record)
    return image if isinstance(image, np.ndarray) else np.asarray(image.convert("RGB"))
