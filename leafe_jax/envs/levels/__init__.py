"""Sokoban levels in XSB format, written for this project (loaded with importlib.resources)."""
