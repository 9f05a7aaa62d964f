"""WebShop: the client Env (`env.py`) and the server it runs under WebShop's own Python (`server.py`)."""

from leafe_jax.envs.webshop.env import WebShopEnv, WebShopServerError

__all__ = ["WebShopEnv", "WebShopServerError"]
