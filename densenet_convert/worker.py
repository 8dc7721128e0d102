"""One step of a conversion, run in the environment that has the format's framework.

    python -m densenet_convert.worker read FORMAT SRC CANONICAL_OUT
    python -m densenet_convert.worker write FORMAT CANONICAL_IN DST

The last line on stdout is JSON: {"warnings": [...]} on success, or {"error": class name,
"message": ...} for a named error, which the CLI raises again in its own process.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from densenet_convert import formats
    from densenet_spec import weightfile
    from densenet_spec.errors import DenseNetError

    try:
        step, fmt, src, dst = argv
        if step == "read":
            tensors, config = formats.read_canonical(src, fmt)
            weightfile.save_weights(dst, tensors, config)
            warnings = []
        else:
            tensors, config = weightfile.load_weights(src)
            warnings = formats.write_format(dst, fmt, tensors, config)
    except DenseNetError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
        return 1
    print(json.dumps({"warnings": warnings}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
