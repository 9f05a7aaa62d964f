"""Jitted batched sampling with an explicit KV-cache pytree."""

from leafe_jax.sampling.sampler import Sample, Sampler

__all__ = ["Sample", "Sampler"]
