"""The book's subcommands: run the chapters, the reference drafter's run, the loss study, and
one distillation recipe. They import :mod:`draftalign.book` only when they run."""

from __future__ import annotations

from pathlib import Path

from . import args as A

EXAMPLES = {
    "book": "draftalign book --profile cpu --build",
    "reference": "draftalign reference --stages pretrain --budget pretrain=600",
    "study": "draftalign study --stages report",
    "recipe": "draftalign recipe --draft pretrained --loss fkl --steps 250",
}


def add_book(p):
    from ..book.profiles import PROFILES

    p.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    p.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these")
    p.add_argument("--build", action="store_true", help="render the HTML afterwards")
    p.add_argument("--no-run", action="store_true", help="skip execution (render what is there)")
    p.add_argument("--quiet", action="store_true", help="no per-cell progress bar while a notebook runs")
    p.add_argument("--student", action="store_true",
                   help="write the student edition (notebooks/student/: exercises open, solutions out) and exit")


def add_reference(p):
    from ..book.profiles import DRAFTER_NAME, REFERENCE_STAGES as STAGES

    p.add_argument("--profile", default="reference", help="profile (default: reference)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated, from {', '.join(STAGES)} (default: all, in this order)")
    p.add_argument("--budget", type=A.budget, action="append", default=[], metavar="STAGE=SECONDS",
                   help="fit a stage into a time budget (repeatable)")
    p.add_argument("--dtype", default=None, help="target dtype (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--threads", type=A.positive(int), default=None, help="torch threads (timings: 1)")
    p.add_argument("--losses", default=None, help="comma-separated KD losses (default: the profile's)")
    p.add_argument("--out", type=Path, default=None, help=f"export folder (default: data/drafts/{DRAFTER_NAME})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a profile field, e.g. --set ref_bench_prompts=4 (repeatable)")


def add_study(p):
    from ..book.loss_study import SIZES, STAGES, STEPS

    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    p.add_argument("--steps", type=A.positive(int), default=STEPS, help="optimizer steps per run (every loss and mode)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds per loss")
    p.add_argument("--out", type=Path, default=None, help="the run folder (default: runs/loss-study)")
    p.add_argument("--results", type=Path, default=None, help="default: data/results/loss_study.json")
    p.add_argument("--threads", type=A.positive(int), default=None)
    p.add_argument("--set", action="append", default=[], metavar="SIZE=VALUE",
                   help=f"change a size (a number), of: {', '.join(SIZES)}")


def add_recipe(p):
    p.add_argument("--draft", default="pretrained", help="pretrained, fresh:HIDDEN,LAYERS or layers:I,J,...")
    p.add_argument("--loss", type=A.loss, default="fkl")
    p.add_argument("--data", type=A.data_folder, default=None, help="default: the cpu profile's set")
    p.add_argument("--steps", type=A.positive(int), default=96)
    p.add_argument("--batch", type=A.positive(int), default=8)
    p.add_argument("--lr", type=A.positive(float), default=3e-3)
    p.add_argument("--warmup", type=A.positive(int), default=10)
    p.add_argument("--max-length", type=A.positive(int), default=320)
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--full-vocab", action="store_true", help="keep the output layer over the whole vocabulary")
    p.add_argument("--sub-vocab-topk", type=A.positive(int), default=4,
                   help="the sub-vocabulary takes the target's top-k at each answer token")
    p.add_argument("--tau-per-category", type=A.positive(int), default=1, help="evaluation prompts per category")
    p.add_argument("--threads", type=A.positive(int), default=2)


COMMANDS = {
    "book": ("run the book's chapters for a profile (papermill) and render the HTML", add_book),
    "reference": ("build the reference drafter: pretrain, distillation data, KD with each loss, evaluation, "
                  "export; every stage resumes after a stop", add_reference),
    "study": ("the loss study at the reference scale: every loss, several seeds, on- and off-policy, with "
              "intervals (data/results/loss_study.json)", add_study),
    "recipe": ("one distillation recipe, measured: held-out agreement, training speed and tau", add_recipe),
}


def check_book(ap, args) -> None:
    """Checks argparse cannot make, before anything loads; ``ap.error`` names the flag."""
    if args.command == "reference":
        from ..book.profiles import REFERENCE_STAGES as STAGES
        from ..losses import LOSSES

        args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = [s for s in args.stages if s not in STAGES]
        if bad:
            ap.error(f"--stages: unknown stage(s) {bad}; choose from {STAGES}")
        for stage, _ in args.budget:
            if stage not in STAGES:
                ap.error(f"--budget: the stage must be one of {STAGES}, got {stage!r}")
        if args.losses:
            args.losses = tuple(x.strip() for x in args.losses.split(","))
            if any(x not in LOSSES for x in args.losses):
                ap.error(f"--losses: choose from {sorted(LOSSES)}")
    elif args.command == "study":
        from ..book.loss_study import SIZES, STAGES

        args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        if sorted(set(args.stages) - set(STAGES)):
            ap.error(f"--stages: unknown stages {sorted(set(args.stages) - set(STAGES))}; choose from {STAGES}")
        try:
            args.seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            ap.error(f"--seeds: want comma-separated integers, got {args.seeds!r}")
        for item in args.set:
            if item.partition("=")[0] not in SIZES:
                ap.error(f"--set {item}: no size {item.partition('=')[0]!r}")
    elif args.command == "book" and args.student and (args.only or args.build or args.no_run):
        ap.error("--student writes the student edition of every chapter and runs nothing; "
                 "it takes no --only, --build or --no-run")
    elif args.command == "recipe":
        kind = args.draft.partition(":")[0]
        if args.draft != "pretrained" and kind not in ("fresh", "layers"):
            ap.error(f"--draft must be pretrained, fresh:H,L or layers:I,J,..., got {args.draft!r}")


def cmd_book(args):
    from ..book.runner import build_html, run_notebooks

    if args.student:  # runs nothing: the full chapters are read, the student copies written
        from ..book.student import write_student_edition

        for path in write_student_edition():
            print(f"[book] wrote {path}")
        return
    if not args.no_run:  # papermill's bar advances cell by cell: a long chapter is never silent
        run_notebooks(args.profile, only=args.only, progress=not args.quiet)
    if args.build:
        print(f"[book] rendered {build_html()}")


def cmd_reference(args):
    import torch

    from ..book.profiles import get_profile, parse_override
    from ..book.reference import Run, run_stages

    overrides = {"kd_losses": args.losses} if args.losses else {}
    for item in args.set:
        try:
            overrides.update(parse_override(item, args.profile))
        except ValueError as exc:
            raise SystemExit(f"--set: {exc}") from None
    P = get_profile(args.profile, **overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_stages(Run(P, dtype=args.dtype, budgets=dict(args.budget)), args.stages, out=args.out)


def cmd_study(args):
    from ..book.loss_study import run_study

    run_study(stages=args.stages, steps=args.steps, seeds=args.seeds, out=args.out, results=args.results,
              threads=args.threads, sets=args.set)


def cmd_recipe(args):
    from ..book.recipe import run_recipe

    print(run_recipe(**{k: v for k, v in vars(args).items() if k not in ("command", "handler")}))
