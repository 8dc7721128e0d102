"""densenet-teach: a static page with every DenseNet building block side by side in four
frameworks, read from the source files at build time, with the parity numbers of each block."""

from densenet_teach.page import Site, build, stale

__all__ = ["build", "stale", "Site"]
