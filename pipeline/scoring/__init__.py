"""How good the images are: Inception features, FID, KID, precision/recall, MiFID, history."""
