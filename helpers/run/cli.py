"""The command line: `python -m helpers run ...`, `sweep ...`, `crossfit ...`, `replicate ...`, `weights ...` and
`params`."""
from __future__ import annotations

import argparse
import sys

from helpers.core.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers", description="Distilling Justice: run the notebook suite.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the notebooks in order (skipping finished, unchanged stages)"),
                       ("sweep", "rerun the student stage for every combination of -p values (a,b,c)"),
                       ("crossfit", "cross-fitting: run stages 01-03 once per fold (each fold the test split once, "
                                    "teacher and students per fold, in <run-dir>-fold<k>) and pool every fold's "
                                    "test cases into one verdict table (<run-dir>-crossfit/kd_gain.csv)")):
        s = sub.add_parser(name, help=text, description=text)
        src = s.add_mutually_exclusive_group()
        src.add_argument("--profile", default="default", help="profile name (profiles/NAME.yaml); default: default")
        src.add_argument("-f", "--file", dest="param_file",
                         help="a YAML parameter file layered over the default profile")
        s.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                       help="override one parameter (lists: a,b,c)" if name != "sweep" else
                       "a swept parameter and its comma-separated values")
        s.add_argument("--data", help="path of a JUSTICE-schema csv (sets data_path)")
        s.add_argument("--transfer", help="path of a csv of unlabelled transfer cases, labels ignored (sets "
                                          "transfer_path)")
        s.add_argument("--run-dir", help="run folder (default runs/<profile>)")
        s.add_argument("--force", action="store_true", help="rerun stages even when up to date")
        s.add_argument("--verbose", action="store_true",
                       help="stream papermill's log (cell by cell, every cell's text output, kernel warnings) "
                            "instead of only what the notebooks print")
        if name == "crossfit":
            s.add_argument("--folds", type=int, default=5, help="folds (default 5): the run costs this many times "
                                                                "the profile's stages 01-03")
        elif name == "run":
            s.add_argument("--only", help="run this stage only (e.g. 02 or train_teacher)")
            s.add_argument("--from", dest="start", help="run from this stage on")
            s.add_argument("--until", help="stop after this stage")
        else:
            s.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                           help="a fixed (not swept) parameter override")
    rep = sub.add_parser("replicate", help="rerun a finished run's student stage with other seeds (or on another "
                                           "synthetic corpus) and compare the verdicts row by row",
                         description="rerun the student stage of a finished run folder with a disjoint seed set, "
                                     "reusing its data and teacher (or, with --synthetic-seed, on a new corpus with "
                                     "its own teacher), and print whether each verdict agrees, contradicts or is "
                                     "undecided in one of the two runs (replication.csv in the replicate's folder)")
    rep.add_argument("--run-dir", default="runs/default", help="the finished run folder (default runs/default)")
    rep.add_argument("--seeds", help="the replicate's seeds, comma-separated (default: as many as the run used, "
                                     "above its largest: 0-4 -> 5-9)")
    rep.add_argument("--synthetic-seed", type=int, help="also draw a new synthetic corpus with this generator seed "
                                                        "(data and teacher are made anew)")
    rep.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                     help="another change for the replicate (e.g. -p precision fp32)")
    rep.add_argument("--out", help="the replicate's run folder (default: beside the run, named after the change)")
    rep.add_argument("--force", action="store_true", help="rerun its stages even when up to date")
    rep.add_argument("--verbose", action="store_true", help="stream papermill's log")
    wts = sub.add_parser("weights", help="choose the beyond-logit arms' term weights on validation",
                         description="retrain each beyond-logit arm of a finished run at its chosen learning rate "
                                     "with other term weights on the run's tuning seeds, keep the best mean "
                                     "validation metric per arm (one more weight past an edge), and write "
                                     "models/weight_selection.csv; no test case is scored")
    wts.add_argument("--run-dir", default="runs/beyond", help="the finished run folder (default runs/beyond)")
    wts.add_argument("--weights", default="0.25,1,4", help="weights to try, comma-separated (default 0.25,1,4; the "
                                                            "run's own weight is always among them)")
    wts.add_argument("--extend", type=int, default=1, help="weights added past an edge at most (default 1)")
    params = sub.add_parser("params", help="print the default profile, rendered from the parameters' declarations",
                            description="print profiles/default.yaml as helpers/core/params.py declares it "
                                        "(`python -m helpers params > profiles/default.yaml` after adding a "
                                        "parameter)")
    params.add_argument("--markdown", action="store_true",
                        help="print the parameter tables of docs/parameters.md instead")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "params":
        from helpers.core.params import render_default_profile, render_parameters_markdown

        sys.stdout.write(render_parameters_markdown() if args.markdown else render_default_profile())
        return 0
    from helpers.run.runner import StageFailed

    transfer = [("transfer_path", args.transfer)] if getattr(args, "transfer", None) is not None else []
    try:
        if args.command == "run":
            from helpers.config.resolve import resolve
            from helpers.run.runner import run

            params = resolve(None if args.param_file else args.profile, args.param_file, [*args.param, *transfer],
                             args.data, args.run_dir)
            run(params, only=args.only, start=args.start, until=args.until, force=args.force, verbose=args.verbose)
        elif args.command == "crossfit":
            from helpers.config.resolve import resolve
            from helpers.run.crossfit import crossfit

            params = resolve(None if args.param_file else args.profile, args.param_file, [*args.param, *transfer],
                             args.data, args.run_dir)
            crossfit(params, args.folds, force=args.force, verbose=args.verbose)
        elif args.command == "replicate":
            from helpers.run.replicate import replicate

            seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
            replicate(args.run_dir, seeds=seeds, synthetic_seed=args.synthetic_seed, out_dir=args.out,
                      overrides=args.param, force=args.force, verbose=args.verbose)
        elif args.command == "weights":
            from helpers.run.weights import choose_weights

            choose_weights(args.run_dir, [float(v) for v in args.weights.split(",")], extensions=args.extend)
        else:
            from helpers.run.sweep import sweep

            sweep(args.param, None if args.param_file else args.profile, args.param_file, [*args.set, *transfer],
                  args.data, args.run_dir, args.force, verbose=args.verbose)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0

