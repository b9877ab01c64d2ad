"""Size, latency and deployment variants of trained models."""
