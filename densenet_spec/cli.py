"""densenet-parity: run every framework on one case and compare each with the oracle and each other."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from densenet_spec.case import DEVICES, QUANTITIES, SGDConfig, make_case
from densenet_spec.config import PRESETS, get_preset
from densenet_spec.errors import DenseNetError
from densenet_spec.frameworks import FRAMEWORKS, VARIANTS, parse_frameworks
from densenet_spec.harness import MUTATIONS


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="densenet-parity",
        description="Load equal weights into every framework, run forward (eval and train mode), "
        "gradients and SGD steps, and compare each framework with the NumPy oracle and with each other.",
    )
    p.add_argument("--preset", default="d2l", help=f"one of: {', '.join(PRESETS)} (default d2l)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated (default: all)")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image-size", type=int, default=None, help="default: 96 for d2l, 64 ImageNet, 32 CIFAR")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--steps", type=int, default=1, help="SGD-momentum steps K (same batches for all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=SGDConfig.lr)
    p.add_argument("--momentum", type=float, default=SGDConfig.momentum)
    p.add_argument("--weight-decay", type=float, default=SGDConfig.weight_decay)
    p.add_argument("--quantities", default=",".join(QUANTITIES), help="subset of eval,train,grad,step")
    p.add_argument("--memory-efficient", action="store_true", help="checkpointed dense layers")
    p.add_argument(
        "--variant",
        default="plain",
        choices=VARIANTS,
        help="plain: the teaching model (layers.py, model.py); fast: the framework's performance "
        "modules injected where its backend has them (default plain)",
    )
    p.add_argument(
        "--mutate",
        action="append",
        default=[],
        metavar="FRAMEWORK:KIND",
        help="self-check: perturb one framework (KIND bn_eps or same_padding); the run must then fail "
        "and name the first diverging stage",
    )
    p.add_argument("--json", type=Path, help="write every comparison with its error and bound here")
    p.add_argument("--report", type=Path, help="write parity.md, parity.html (heatmap) and parity.json here")
    p.add_argument("--no-setup", action="store_true", help="do not build missing environments")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from densenet_spec import report

    console = report.console()
    try:
        config = get_preset(args.preset)
        frameworks = parse_frameworks(args.frameworks)
        quantities = tuple(q.strip() for q in args.quantities.split(",") if q.strip())
        if not quantities:
            raise DenseNetError(f"--quantities names none of {', '.join(QUANTITIES)}")
        bad = [q for q in quantities if q not in QUANTITIES]
        if bad:
            raise DenseNetError(f"unknown quantities {bad}; known: {', '.join(QUANTITIES)}")
        mutations = {}
        for m in args.mutate:
            fw, _, kind = m.partition(":")
            if fw not in frameworks or kind not in MUTATIONS:
                raise DenseNetError(
                    f"--mutate {m!r}: expected FRAMEWORK:KIND with FRAMEWORK one of the run's "
                    "frameworks and KIND bn_eps or same_padding"
                )
            mutations[fw] = kind
        if args.batch < 1 or args.steps < 0:
            raise DenseNetError("--batch must be >= 1 and --steps >= 0")
        from densenet_spec.harness import default_image_size, expected_divergence, run_parity

        for kind in mutations.values():
            try:
                expected_divergence(config, kind)
            except ValueError as e:
                raise DenseNetError(f"--mutate: {e}") from None
        size = args.image_size or default_image_size(config)
        case = make_case(
            config,
            batch=args.batch,
            image_size=size,
            dtype=args.dtype,
            device=args.device,
            seed=args.seed,
            steps=args.steps,
            quantities=quantities,
            sgd=SGDConfig(args.lr, args.momentum, args.weight_decay),
            memory_efficient=args.memory_efficient,
            variant=args.variant,
        )
    except DenseNetError as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2
    command = "densenet-parity " + " ".join(shlex.quote(a) for a in argv)
    with console.status("starting", spinner="dots") as status:
        result = run_parity(
            case,
            frameworks,
            setup=not args.no_setup,
            log=report.logger(console, status),
            command=command,
            mutations=mutations,
        )
    report.print_report(result, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=1))
        console.print(f"JSON report: {args.json}")
    if args.report:
        from densenet_spec.report_files import write_report

        paths = write_report(result, args.report)
        console.print(f"report: {paths['html']} (and {paths['markdown'].name}, {paths['json'].name})")
    if mutations:
        from densenet_spec.harness import self_check

        problems = self_check(result)
        for line in problems:
            console.print(f"[bold red]self-check:[/] {line}")
        console.print(
            "[bold green]SELF-CHECK OK[/]: the report failed where the mutation was made"
            if not problems
            else "[bold red]SELF-CHECK FAILED[/]"
        )
        return 0 if not problems else 1
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
