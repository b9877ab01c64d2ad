"""The synthetic JUSTICE-schema corpus and its documented latent rule."""
