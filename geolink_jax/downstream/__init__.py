"""Downstream use of pretrained GeoLink weights: embeddings, UperNet segmentation, linear probe and kNN."""
