"""The GeoLink model family (imagery + OpenStreetMap): the model (`model.py`: the image branch of nn.mae, the
typed-relation graph network, Set2Set readout and the fusion block), FLOPs, the official-weights converter, tile
embeddings, UperNet fine-tuning, attention pictures, its commands and the family record."""
