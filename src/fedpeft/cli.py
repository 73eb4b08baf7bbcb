"""Command-line interface: one table from subcommand to function. Nothing is parsed at import time."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from fedpeft.errors import FedPeftError


def cmd_list(args: argparse.Namespace) -> int:
    """Print the registered PEFT methods, models and datasets."""
    import fedpeft  # noqa: F401  (importing the package registers every component)
    from fedpeft.registry import DATASETS, MODELS, PEFT_METHODS

    print("PEFT methods:")
    for name, method in PEFT_METHODS.items():
        print(f"  {name:<16} {method.family:<16} {method.description}")
    print("Models (short names; any Hugging Face id or local path also works):")
    for name, spec in MODELS.items():
        present = "" if (spec.path / "config.json").is_file() else "  [checkpoint missing]"
        print(f"  {name:<16} {spec.description}{present}")
    print("Datasets:")
    for name, ds in DATASETS.items():
        print(f"  {name:<22} {ds.task_type:<15} {ds.description}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Centralized PEFT fine-tuning of a recipe; prints a before/after table and the run directory last."""
    from fedpeft.config import JobConfig, load_config
    from fedpeft.training.centralized import run_centralized

    cfg = load_config(JobConfig, args.recipe, args.set)
    run = run_centralized(cfg, quiet=args.quiet)
    summary = json.loads((run.path / "summary.json").read_text())
    if not args.quiet:
        print(f"\n{'metric':<14}{'before':>10}{'after':>10}")
        for key, after in summary["final"].items():
            print(f"{key:<14}{summary['before'][key]:>10.4f}{after:>10.4f}")
        print(f"trainable params {summary['trainable_params']}, {summary['steps']} steps, {summary['wall_s']} s")
    print(run.path)
    return 0


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", type=Path, help="TOML recipe (see recipes/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.lr=1e-3"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables; print only the run directory")


COMMANDS: dict[
    str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None] | None]
] = {
    "list": (cmd_list, "list registered PEFT methods, models and datasets", None),
    "finetune": (cmd_finetune, "centralized PEFT fine-tuning of a recipe", _add_recipe_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpeft", description="Federated parameter-efficient fine-tuning of LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if add_args is not None:
            add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FedPeftError as exc:
        print(f"fedpeft: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
