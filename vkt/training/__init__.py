"""Training loops, datasets, synthetic data generators and checkpoints (torch, Lightning)."""
