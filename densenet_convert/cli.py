"""densenet-convert: DenseNet weights between torchvision/timm, keras.applications, the Gluon
model zoo and this project's canonical weight file, with the config recognised from the shapes.

    densenet-convert densenet121.pth densenet121.safetensors       # torchvision -> canonical
    densenet-convert model.safetensors model.weights.h5            # canonical -> keras
    densenet-convert a.pth b.params                                # torchvision -> gluon

A step whose format needs a framework runs in that framework's environment (worker.py), with a
canonical file in a temporary folder in between; the destination is written atomically, and not
at all on an error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from densenet_convert import errors as convert_errors
from densenet_convert import formats
from densenet_convert.recognise import check_preset, describe
from densenet_spec import errors as spec_errors
from densenet_spec.config import PRESETS
from densenet_spec.errors import DenseNetError, UsageError

WORKER_TIMEOUT_S = 600


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="densenet-convert",
        description="Convert DenseNet weights between torchvision/timm state_dicts, "
        "keras.applications files, Gluon model-zoo .params and the canonical weight file.",
    )
    p.add_argument("src", help="the file to read")
    p.add_argument("dst", help="the file to write (replaced atomically)")
    names = ", ".join(formats.FORMATS)
    p.add_argument(
        "--from", dest="src_format", help=f"format of SRC when its name does not tell ({names})"
    )
    p.add_argument(
        "--to", dest="dst_format", help=f"format of DST when its name does not tell ({names})"
    )
    p.add_argument(
        "--preset",
        help=f"fail unless SRC's architecture is this preset ({', '.join(PRESETS)})",
    )
    return p.parse_args(argv)


def _named_error(name: str, message: str) -> DenseNetError:
    cls = getattr(convert_errors, name, None) or getattr(spec_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, DenseNetError)):
        cls = convert_errors.ConvertError
    try:
        return cls(message)
    except TypeError:  # errors with structured constructors (WeightKeysError)
        return convert_errors.ConvertError(f"{name}: {message}")


def run_step(step: str, fmt: str, src, dst, env: str) -> list[str]:
    """One worker step, in-process for the spec environment, else in `env`'s Python."""
    if env == "spec":
        from densenet_spec import weightfile

        if step == "read":
            weightfile.save_weights(dst, *formats.read_canonical(src, fmt))
            return []
        return formats.write_format(dst, fmt, *weightfile.load_weights(src))
    import densenet_envs

    python = densenet_envs.env_python(env)
    if not python.exists():
        raise spec_errors.EnvironmentSetupError(
            f"the {env} environment ({python}) is missing: `python3 dev.py envs {env}` builds it"
        )
    cmd = [str(python), "-m", "densenet_convert.worker", step, fmt, str(src), str(dst)]
    proc = subprocess.run(
        cmd,
        env=densenet_envs.worker_env(env),
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise convert_errors.ConvertError(
            f"the {env} worker failed ({step} {fmt}, exit {proc.returncode}):\n{tail}"
        ) from None
    if "error" in result:
        raise _named_error(result["error"], result["message"])
    return result["warnings"]


def convert(
    src,
    dst,
    src_format: str | None = None,
    dst_format: str | None = None,
    preset: str | None = None,
    log=print,
) -> list[str]:
    """SRC -> DST; returns the warnings (BatchNorm conventions the target does not share)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    if dst.exists() and dst.is_dir():
        raise UsageError(f"{dst} is a directory")
    if src.resolve() == dst.resolve():
        raise UsageError("SRC and DST are the same file")
    fmt_in = (
        formats.get_format(src_format).name
        if src_format
        else formats.detect_format(src, exists=True)
    )
    fmt_out = (
        formats.get_format(dst_format).name
        if dst_format
        else formats.detect_format(dst, exists=False)
    )
    with tempfile.TemporaryDirectory(prefix="densenet-convert-") as tmp:
        canonical = src if fmt_in == "canonical" else Path(tmp) / "canonical.safetensors"
        if fmt_in != "canonical":
            run_step("read", fmt_in, src, canonical, formats.env_for(fmt_in, src))
        from densenet_spec import weightfile

        tensors, config = weightfile.load_weights(canonical)
        log(f"read {fmt_in} {src}: {describe(config)}")
        if preset:
            check_preset(config, preset)
        if fmt_out == "canonical":
            weightfile.save_weights(dst, tensors, config)
            warnings = []
        else:
            formats.check_target(fmt_out, config)  # before starting a framework
            warnings = run_step("write", fmt_out, canonical, dst, formats.env_for(fmt_out, dst))
    log(f"wrote {fmt_out} {dst}")
    return warnings


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        warnings = convert(args.src, args.dst, args.src_format, args.dst_format, args.preset)
    except DenseNetError as e:
        print(f"densenet-convert: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print(f"densenet-convert: error: a worker ran past {WORKER_TIMEOUT_S} s", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
