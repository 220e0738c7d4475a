"""The GAN: model families, losses, DiffAugment/ADA, the training loop and its checkpoints."""
