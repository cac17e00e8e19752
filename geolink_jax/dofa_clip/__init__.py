"""GeoLangBind / DOFA-CLIP (issue 17), in progress: the wavelength-conditioned dynamic patch embedding
(`patch_embed.py`) with its torchgeo/DOFA-CLIP weight layout (`convert.py`), and the sigmoid loss, dense and
blockwise across the batch axes (`losses.py`). Not yet a registered family."""
