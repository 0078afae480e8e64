"""The pipeline's stages: each takes messages in one state and moves them on (see :mod:`daemon.pipeline`)."""
