"""Training: the mesh and sharding rules, the optimizer, checkpoints and the family-agnostic train loop."""
