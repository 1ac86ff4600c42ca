"""Mapper training, latent datasets and evaluation."""
