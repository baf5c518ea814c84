"""Converters from released checkpoints into diffusers folders the loader reads."""
