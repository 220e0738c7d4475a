"""GAN competition pipeline: fetch, crop, pad, augment, train, generate, package, score.

The library. Only the CLI (`python -m pipeline`) knows the stages; importing any module here
does no I/O.
"""
