"""densenet-teach: build the side-by-side teaching page, or check that a built one is current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densenet_spec.frameworks import parse_frameworks
from densenet_teach.page import PAGE, ROOT, build, stale


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="densenet-teach",
        description="Build a static site (no server) that shows each DenseNet building block in "
        "every framework side by side, read from the source files now, with the parity numbers "
        "of that block from densenet-parity --json runs.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("reports/teach"),
        help="output folder; open its index.html (default: reports/teach)",
    )
    p.add_argument(
        "--parity",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="a `densenet-parity --json` report; give one float64 and one float32 run "
        "(repeatable; without any, every number reads 'not run')",
    )
    p.add_argument("--frameworks", default=None, help="comma-separated columns (default: all)")
    p.add_argument("--root", type=Path, default=ROOT, help="the source tree (default: this one)")
    p.add_argument(
        "--check",
        action="store_true",
        help="do not build: exit 1 if the page in --out no longer shows the source as it is now",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    frameworks = parse_frameworks(args.frameworks) if args.frameworks else None
    if args.check:
        page = args.out / PAGE
        if not page.exists():
            print(f"densenet-teach: {page} does not exist", file=sys.stderr)
            return 1
        problems = stale(page, args.root, frameworks)
        for p in problems:
            print(f"stale: {p}", file=sys.stderr)
        if problems:
            print("densenet-teach: the page is not the source's; rebuild it", file=sys.stderr)
            return 1
        print(f"{page} shows the source as it is")
        return 0
    site = build(args.out, args.root, args.parity, frameworks)
    for w in site.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {site.page} ({len(site.manifest['files'])} source files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
