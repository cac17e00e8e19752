"""Family-free downstream tools: the embedding loop and its GeoParquet files, the UperNet head, linear probe and
kNN, metrics. A family's own downstream commands live in its folder (GeoLink's finetune and attention)."""
