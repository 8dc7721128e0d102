"""Write notebooks/d2l-example.safetensors: the weight file the four example notebooks share.

The d2l preset's initial weights from seed 0 in float32 (densenet_spec.params.init_params), the
same file each notebook writes itself when it is missing, so it is generated, never committed.
The notebook tests call make() before running the notebooks, so all four read one file. Run from
the repository root in any environment (numpy and safetensors only):

    PYTHONPATH=. .venvs/spec/bin/python scripts/make_notebook_weights.py [--force]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from densenet_spec import weightfile
from densenet_spec.config import get_preset
from densenet_spec.params import init_params

PATH = Path(__file__).resolve().parent.parent / "notebooks" / "d2l-example.safetensors"


def make(path: Path = PATH, *, force: bool = False) -> Path:
    """The notebooks' weight file at `path`, written (atomically) unless it is there already."""
    if force or not path.exists():
        config = get_preset("d2l")
        weightfile.save_weights(path, init_params(config, 0, np.float32), config)
    return path


if __name__ == "__main__":
    print(make(force="--force" in sys.argv[1:]))
