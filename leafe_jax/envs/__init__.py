"""Environments: the Env protocol, the registry and one module per environment (no JAX imports here)."""

from leafe_jax.envs.base import INVALID_ACTION, Env, Observation, SnapshotEnv, Step
from leafe_jax.envs.registry import make, names

__all__ = ["INVALID_ACTION", "Env", "Observation", "SnapshotEnv", "Step", "make", "names"]
