"""Querying the RS token grid at street-view locations: NILI (neural implicit local interpolation) and the
bilinear / bicubic baselines.

Coordinates. A patch's bbox is (lon_min, lat_max, lon_max, lat_min) and a location (lon, lat);
`relative_coords` gives (x, y) = ((lon − lon_min)/(lon_max − lon_min), (lat_max − lat)/(lat_max − lat_min)), linear
in degrees (a projected patch gets CRS-aware relative coordinates from preprocessing instead). A *grid position*
(p_row, p_col) addresses the token grid in grid_sample's [−1, 1] convention (align_corners=False: cell centres at
−1 + (2i + 1)/n). How relative coordinates become grid positions is the `convention`:
- "research" (default; what GAIR's released weights were trained with): p = (x, y) unchanged, so x (from lon)
  indexes rows, y (from lat) columns, and positions stay in [0, 1] (the lower-right quarter of the grid);
- "head" (GAIR's later inference package): p = (2y − 1, 2x − 1), rows from north to south, columns west to east;
  its imnet takes the relative offsets in (column, row) order.
The bilinear / bicubic baselines exist only in the inference package, so they always use its ("head") mapping.

NILI (LIIF's local ensemble). The tokens [B, h, w, D] are unfolded 3 × 3 (zero padded; features channel-major,
9D wide). For each of the 4 corners (±1/h, ±1/w shifts, + 1e-6, clamped to ±(1 − 1e-6)) the nearest cell is looked
up; the corner's prediction is imnet([unfolded feature of that cell, (p − cell centre) · (h, w)]) with one linear
imnet [9D + 2 → D]; predictions are blended with the area of the opposite rectangle over the total. A linear imnet
on an unfolded feature is a 3 × 3 convolution of the grid, which is how it is computed: one conv of the grid, then a
gather per query (instead of a 9D-wide matmul per query and corner).
"""

import jax
import jax.numpy as jnp

CONVENTIONS = ("research", "head")
MODES = ("nili", "bilinear", "bicubic")


def relative_coords(bbox, lonlat):
    """bbox float [..., 4] (lon_min, lat_max, lon_max, lat_min), lonlat [..., 2] → (x, y) [..., 2], 0..1 inside."""
    lon_min, lat_max, lon_max, lat_min = (bbox[..., i] for i in range(4))
    return jnp.stack([(lonlat[..., 0] - lon_min) / (lon_max - lon_min),
                      (lat_max - lonlat[..., 1]) / (lat_max - lat_min)], -1)


def grid_position(rel, convention="research"):
    """Relative (x, y) [..., 2] → grid position (p_row, p_col) [..., 2] (see the module docstring)."""
    if convention == "research":
        return rel
    if convention == "head":
        return jnp.stack([2 * rel[..., 1] - 1, 2 * rel[..., 0] - 1], -1)
    raise ValueError(f"unknown NILI coordinate convention {convention!r}; known: {', '.join(CONVENTIONS)}")


def cell_centres(n):
    return -1.0 + (2.0 * jnp.arange(n) + 1.0) / n


def _nearest(p, n):
    """grid_sample nearest, align_corners=False: index of the cell holding position p (round half to even)."""
    return jnp.clip(jnp.round(((p + 1.0) * n - 1.0) / 2.0), 0, n - 1).astype(jnp.int32)


def _gather(grid, rows, cols):
    """grid [B, h, w, D], rows/cols int [B, S] → [B, S, D]."""
    b, h, w, d = grid.shape
    flat = grid.reshape(b, h * w, d)
    return jnp.take_along_axis(flat, (rows * w + cols)[..., None], axis=1)


def nili(grid, pos, kernel, bias, offsets_col_first=False):
    """grid [B, h, w, D] tokens, pos [B, S, 2] grid positions, imnet kernel [9D + 2, Do] (rows: unfolded features
    channel-major (c, ki, kj), then the two relative offsets: (row, col), or (col, row) with offsets_col_first as
    the "head" convention's imnet takes them), bias [Do] → [B, S, Do]."""
    b, h, w, d = grid.shape
    conv_kernel = kernel[:9 * d].reshape(d, 3, 3, -1).transpose(1, 2, 0, 3)  # HWIO
    cells = jax.lax.conv_general_dilated(grid, conv_kernel.astype(grid.dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    w_rel = kernel[9 * d:]
    preds, areas = [], []
    for vr in (-1, 1):
        for vc in (-1, 1):
            q = pos + jnp.array([vr / h + 1e-6, vc / w + 1e-6], pos.dtype)
            q = jnp.clip(q, -1 + 1e-6, 1 - 1e-6)
            rows, cols = _nearest(q[..., 0], h), _nearest(q[..., 1], w)
            centre = jnp.stack([cell_centres(h)[rows], cell_centres(w)[cols]], -1)
            rel = (pos - centre) * jnp.array([h, w], pos.dtype)
            offsets = rel[..., ::-1] if offsets_col_first else rel
            preds.append(_gather(cells, rows, cols) + offsets.astype(cells.dtype) @ w_rel.astype(cells.dtype) + bias)
            areas.append(jnp.abs(rel[..., 0] * rel[..., 1]) + 1e-9)
    total = sum(areas)
    # each corner is weighted by the area of the rectangle opposite it (corner k ↔ 3 − k)
    return sum(p * (areas[3 - k] / total)[..., None].astype(p.dtype) for k, p in enumerate(preds))


def _cubic(t, a=-0.75):
    """Keys' cubic convolution weights (torch's bicubic, a = −0.75) for the 4 taps at offsets −1, 0, 1, 2."""
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def interpolate(grid, pos, mode):
    """grid_sample(grid, pos) with align_corners=False and zero padding: 'bilinear' or 'bicubic'.
    grid [B, h, w, D], pos [B, S, 2] (p_row, p_col) → [B, S, D]."""
    b, h, w, d = grid.shape
    y = ((pos[..., 0] + 1.0) * h - 1.0) / 2.0
    x = ((pos[..., 1] + 1.0) * w - 1.0) / 2.0
    y0, x0 = jnp.floor(y), jnp.floor(x)
    ty, tx = y - y0, x - x0
    if mode == "bilinear":
        offsets = (0, 1)
        wy, wx = jnp.stack([1 - ty, ty], -1), jnp.stack([1 - tx, tx], -1)
    elif mode == "bicubic":
        offsets = (-1, 0, 1, 2)
        wy, wx = _cubic(ty), _cubic(tx)
    else:
        raise ValueError(f"unknown query mode {mode!r}; known: {', '.join(MODES)}")
    out = 0.0
    for i, oy in enumerate(offsets):
        for j, ox in enumerate(offsets):
            r, c = (y0 + oy).astype(jnp.int32), (x0 + ox).astype(jnp.int32)
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            v = _gather(grid, jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1))
            out = out + jnp.where(inside[..., None], v, 0) * (wy[..., i] * wx[..., j])[..., None].astype(v.dtype)
    return out
