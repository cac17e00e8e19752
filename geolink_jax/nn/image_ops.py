"""Image ops inside the jitted step that reproduce Pillow's on the host (on-device augmentation)."""

import jax
import jax.numpy as jnp


def crop_resize(canvas, image_hw, box, size):
    """canvas uint8 [Hc, Wc, C] holding an image_hw (height, width) image at its top left, box (left, top, right,
    bottom) in pixels → float32 [size, size, C] in 8-bit levels: Pillow's box resize (bilinear, its filter widened
    when shrinking), rounded to levels as Pillow's uint8 output."""
    # the image's last row and column repeated over the canvas, so the resize kernel never reads the zero padding
    # (Pillow clamps its kernel to the image)
    rows = jnp.minimum(jnp.arange(canvas.shape[0]), image_hw[0] - 1)
    cols = jnp.minimum(jnp.arange(canvas.shape[1]), image_hw[1] - 1)
    x = canvas[rows][:, cols].astype(jnp.float32)
    scale = jnp.stack([size / (box[3] - box[1]), size / (box[2] - box[0])])
    translation = -jnp.stack([box[1], box[0]]) * scale
    x = jax.image.scale_and_translate(x, (size, size, x.shape[-1]), (0, 1), scale, translation, method="linear",
                                      antialias=True)
    return jnp.clip(jnp.round(x), 0.0, 255.0)
