"""A tiny DOFA-CLIP for the command tests: one cached teacher, 6 steps."""

from geolink_jax.dofa_clip.configs import demo


def get_config(arg=None):
    config = demo.get_config()
    config.model.image.update(width=32, depth=1, heads=2, mlp_dim=64, patch_size=8, image_size=32)
    config.model.text.update(context_length=16, width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32)
    config.model.teachers = [dict(name="sig", tokens=16, width=16, image_size=32, tower=dict(
        width=16, depth=1, heads=2, mlp_dim=32, patch_size=8, image_size=32, patch_embed="rgb", taps=[-1]))]
    config.batch_size = 4
    config.total_steps = 6
    config.log_every = 3
    config.checkpoint_every = 6
    return config
