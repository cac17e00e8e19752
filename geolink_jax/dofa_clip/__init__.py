"""The GeoLangBind / DOFA-CLIP model family: any-channel Earth-observation vision–language pretraining. The
wavelength-conditioned dynamic patch embedding (`patch_embed.py`), the SigLIP image and text towers (`towers.py`,
`text.py`), MaKA translators and loss (`maka.py`), the model (`model.py`), pairs and their preprocessing job
(`pairs.py`, `preprocess.py`, `captions.py`), the modality-homogeneous grain pipeline (`pipeline.py`), tokenizers
(`tokenizer.py`), the teacher-feature cache (`teachers.py`), zero-shot evaluation (`zeroshot.py`), weights
(`convert.py`), the command line (`commands.py`) and the family record (`family.py`)."""
