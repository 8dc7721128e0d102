"""Regenerate tests/fixtures/convert/*.json: the names and shapes of the official DenseNets.

Each fixture lists, in the official model's order, every tensor (torchvision, timm, Gluon zoo) or
every layer's variables (keras.applications) of a randomly initialised official model, so the
name tables can be tested in CI without the 5 GB torchvision environment. Run each in the
environment that has the package (no downloads), from the repository root:

    export PYTHONPATH=. KERAS_BACKEND=tensorflow
    .venvs/bench-torchvision/bin/python scripts/make_convert_fixtures.py torchvision timm
    .venvs/tf/bin/python scripts/make_convert_fixtures.py keras
    .venvs/mx/bin/python scripts/make_convert_fixtures.py gluon
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "convert"
PRESETS = {
    "torchvision": ("densenet121", "densenet161"),
    "timm": ("densenet121",),
    "keras": ("densenet121",),
    "gluon": ("densenet121", "densenet161"),
}


def torchvision_tensors(name: str):
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    version = {"torchvision": torchvision.__version__}
    return [[k, list(v.shape)] for k, v in model.state_dict().items()], version


def timm_tensors(name: str):
    import timm

    model = timm.create_model(name, pretrained=False)
    return [[k, list(v.shape)] for k, v in model.state_dict().items()], {"timm": timm.__version__}


def keras_tensors(name: str):
    import keras

    builder = {"densenet121": keras.applications.DenseNet121}[name]
    model = builder(weights=None, classifier_activation=None)
    layers = [[layer.name, [list(w.shape) for w in layer.weights]] for layer in model.layers]
    return [entry for entry in layers if entry[1]], {"keras": keras.__version__}


def gluon_tensors(name: str):
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    model = vision.get_model(name, pretrained=False)
    model.initialize(ctx=mx.cpu())
    model(mx.nd.zeros((1, 3, 224, 224)))  # Gluon infers input channels on the first call
    params = model._collect_params_with_prefix()  # the names save_parameters writes
    return [[k, list(v.shape)] for k, v in params.items()], {"mxnet": mx.__version__}


def main(formats: list[str]) -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        for preset in PRESETS[fmt]:
            tensors, versions = globals()[f"{fmt}_tensors"](preset)
            path = FOLDER / f"{fmt}_{preset}.json"
            head = {
                "format": fmt,
                "preset": preset,
                "versions": versions,
                "generated_by": "scripts/make_convert_fixtures.py",
            }
            key = "layers" if fmt == "keras" else "tensors"
            rows = ",\n".join(json.dumps(entry) for entry in tensors)  # one entry a line
            path.write_text(json.dumps(head)[:-1] + f', "{key}": [\n{rows}\n]}}\n')
            print(f"wrote {path} ({len(tensors)} entries)")


if __name__ == "__main__":
    main(sys.argv[1:] or list(PRESETS))
