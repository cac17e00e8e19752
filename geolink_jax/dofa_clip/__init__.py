"""GeoLangBind / DOFA-CLIP (issue 17), in progress: the wavelength-conditioned dynamic patch embedding
(`patch_embed.py`) and its torchgeo/DOFA-CLIP weight layout (`convert.py`). Not yet a registered family."""
