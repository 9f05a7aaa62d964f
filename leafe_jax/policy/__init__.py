"""Policy clients: the protocol, an in-process JAX sampler client, an OpenAI-compatible client, scripted."""

from leafe_jax.policy.base import Completion, Message, Policy

__all__ = ["Completion", "Message", "Policy"]
