"""What leaves the project: generated PNGs and the validated submission zip."""
