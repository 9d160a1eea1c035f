"""The contrastive trainer and the `train` job over the atlas."""
