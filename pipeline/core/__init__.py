"""Plumbing every phase uses: config, errors, the stage runner, devices, files, kaggle, DDP."""
