"""ovis-train: staged training of Ovis-style vision-language models."""

__version__ = "0.1.0"
