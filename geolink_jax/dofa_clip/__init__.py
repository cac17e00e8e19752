"""GeoLangBind / DOFA-CLIP (issue 17), in progress: the wavelength-conditioned dynamic patch embedding
(`patch_embed.py`), the SigLIP image tower with it or the stock RGB convolution and its MAP head (`towers.py`), their
DOFA-CLIP / open_clip weight layouts (`convert.py`), and the sigmoid loss, dense and blockwise across the batch axes
(`losses.py`). Not yet a registered family: the text tower, MaKA, data, zero-shot evaluation come next."""
