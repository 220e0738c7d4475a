"""The stage scripts, in run order. Only the CLI imports this package."""

from stages import augment, crop, fetch, generate, package, pad, score, train

STAGES = [fetch.STAGE, crop.STAGE, pad.STAGE, augment.STAGE, train.STAGE, generate.STAGE,
          package.STAGE, score.STAGE]
