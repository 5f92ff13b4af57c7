"""The ``wmbench`` command line (typer + rich)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wmbench.errors import WmbenchError

app = typer.Typer(
    help="wmbench: benchmark robust image watermarks — which watermark survives which attack, at what quality cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _quiet_warnings() -> None:
    """One line per warning, without the source line Python prints under it; third-party deprecation notices
    (torch.jit.script, imported by compressai) are not the user's to act on."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script.*deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
        return (
            f"warning: {message}\n"
            if issubclass(category, UserWarning)
            else f"{category.__name__}: {message}\n"
        )

    warnings.formatwarning = one_line


@app.callback()
def _main() -> None:
    _quiet_warnings()


def _fail(e: Exception, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", highlight=False)
    return typer.Exit(code)


def _out_path(value: str) -> Path:
    """An --out path; an empty one would silently mean the current folder."""
    if not value.strip():
        raise typer.BadParameter("is empty; give a path (use . for the current folder)")
    return Path(value)


def _tolerance(value: str) -> float:
    """A tolerance: a finite number >= 0 (nan would make every comparison pass)."""
    try:
        v = float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number") from None
    if not (math.isfinite(v) and v >= 0):
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return v


class Kind(StrEnum):
    methods = "methods"
    attacks = "attacks"
    metrics = "metrics"


def _yes(v: Any) -> str:
    return "yes" if v else "no"


def _floats(v: Any) -> str:
    return ", ".join(f"{s:g}" for s in v)


def _range(v: Any) -> str:
    return f"{v[0]:g} → {v[1]:g}"


#: per kind: (table header, row key, how the table shows it); --json gives the rows' whole values instead
LIST_COLUMNS: dict[Kind, list[tuple[str, str, Callable[[Any], str]]]] = {
    Kind.methods: [
        ("method", "name", str),
        ("bits", "nbits", str),
        ("white-box", "differentiable_extract", _yes),
        ("description", "description", str),
    ],
    Kind.attacks: [
        ("attack", "name", str),
        ("family", "family", str),
        ("unit", "unit", str),
        ("default strengths", "default_strengths", _floats),
        ("range (rel 0→1)", "strength_range", _range),
        ("gradient", "gradient", str),
        ("description", "description", str),
    ],
    Kind.metrics: [
        ("metric", "name", str),
        ("kind", "kind", str),
        ("better", "higher_is_better", lambda v: "higher" if v else "lower"),
        ("description", "description", str),
    ],
}


def _list_rows(kind: Kind) -> list[dict[str, Any]]:
    """One dict of whole values per plugin; built-ins' constants read from source (no torch import)."""
    from wmbench.registry import attacks, methods
    from wmbench.static_meta import plugin_meta

    if kind is Kind.metrics:
        from wmbench.metric_meta import METRICS

        return [
            {"name": n, "kind": k, "higher_is_better": better, "description": text}
            for n, (k, better, text) in METRICS.items()
        ]
    reg = methods() if kind is Kind.methods else attacks()
    keys = tuple(k for _, k, _ in LIST_COLUMNS[kind] if k not in ("name", "gradient"))
    if kind is Kind.methods:
        return [{"name": n, **plugin_meta(reg, n, keys)} for n in reg.names()]
    rows = [{"name": n, **plugin_meta(reg, n, (*keys, *GRADIENT_KEYS))} for n in reg.names()]
    for r in rows:  # what training and optimisers get through Attack.forward_st
        r["gradient"] = _gradient(r)
    return rows


#: the class constants the attacks' ``gradient`` column is derived from
GRADIENT_KEYS = ("differentiable", "stand_in_gradient", "training_form")


def _gradient(r: dict[str, Any]) -> str:
    """none (forward_st refuses) | yes (the attack itself) | stand-in (a differentiable forward_st) | straight-through"""
    if r["training_form"] is False:
        return "none"
    if r["differentiable"]:
        return "yes"
    return "stand-in" if r["stand_in_gradient"] is True else "straight-through"


@app.command("list")
def list_cmd(
    kind: Annotated[Kind, typer.Argument(help="what to list")],
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list of objects with whole values")] = False,
) -> None:
    """List registered methods, attacks (with unit and default strengths) or metrics."""
    try:
        rows = _list_rows(kind)
    except WmbenchError as e:
        raise _fail(e) from None
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1, default=str) + "\n")
        return
    cols = LIST_COLUMNS[kind]
    cells = [[show(r[k]) for _, k, show in cols] for r in rows]
    if sys.stdout.isatty():
        t = Table(*(h for h, _, _ in cols))
        for c in cells:
            t.add_row(*c)
        out.print(t)
    else:  # piped: whole values, one row per line, tab-separated, so grep/cut see every name
        for row in [[h for h, _, _ in cols], *cells]:
            sys.stdout.write("\t".join(row) + "\n")


@app.command("params")
def params_cmd(
    name: Annotated[str, typer.Argument(help="a method or attack name")],
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list of objects")] = False,
) -> None:
    """A plugin's params as its Params model declares them (type, default, bounds, description); imports it."""
    from wmbench.params import params_rows
    from wmbench.registry import attacks, methods

    try:
        regs = [r for r in (methods(), attacks()) if name in r]
        if not regs:
            raise WmbenchError(f"{methods().unknown_message(name)} {attacks().unknown_message(name)}")
        rows = [
            {"kind": r.kind, **row} for r in regs for row in params_rows(getattr(r.get(name), "Params", None))
        ]
    except WmbenchError as e:
        raise _fail(e) from None
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    elif not rows:
        out.print(f"{name!r} takes no params")
    elif sys.stdout.isatty():
        t = Table(*rows[0], title=f"{name} params")
        for r in rows:
            t.add_row(*r.values())
        out.print(t)
    else:  # piped: whole values, tab-separated, as `list`
        for r in [dict.fromkeys(rows[0]), *rows]:
            sys.stdout.write("\t".join(k if v is None else v for k, v in r.items()) + "\n")


def _load(suite_path: Path, limit: int | None = None):
    from wmbench.suite import load_suite

    suite = load_suite(suite_path)
    if limit is not None:
        if limit < 1:
            raise WmbenchError(f"--limit must be >= 1, got {limit}")
        # a quick profile takes the first N images; it never asks for more than the suite has
        suite.images.limit = limit
    return suite


def _print_plan(suite, console: Console) -> None:
    from wmbench.suite import expand

    plan = expand(suite)
    n = min((c for c in (suite.images.count, suite.images.limit) if c), default=0)
    t = Table(
        "attack", "family", "unit", "strengths", "differentiable", title=f"suite {suite.name!r}: attacks"
    )
    for a in plan.attacks:
        t.add_row(
            a.label,
            a.attack.family,
            a.attack.unit,
            ", ".join(f"{s:g}" for s in a.strengths),
            "yes" if a.attack.differentiable else "no",
        )
    console.print(t)
    m = Table("method", "registry name", "params", title="methods")
    for mp in plan.methods:
        m.add_row(mp.label, mp.name, json.dumps(mp.params) if mp.params else "")
    console.print(m)
    cells = plan.n_cells_per_method * len(plan.methods)
    size = suite.images.size
    console.print(
        f"images: {suite.images.source} ×{n if n else 'all'} at {size}² (split {suite.images.split}) · "
        f"metrics: {', '.join(suite.metrics)} · seed {suite.seed} · target FPR {suite.target_fpr:g}\n"
        f"work: {len(plan.methods)} methods × {plan.n_cells_per_method} attack cells = {cells} cells "
        f"(+{len(plan.methods)} clean-cover cells); {n * len(plan.methods)} embeddings, "
        f"{n * cells} attacked images, {n * (cells + len(plan.methods))} extractions, "
        f"{n * (cells + len(plan.methods))} result rows"
    )


@app.command()
def validate(
    suite: Annotated[Path, typer.Argument(help="suite YAML file")],
    probe: Annotated[
        bool, typer.Option(help="also load every method's weights and every attack's model, as a run would")
    ] = True,
    strict: Annotated[bool, typer.Option(help="exit 1 when anything would be skipped")] = False,
) -> None:
    """Check a suite (keys, names, params, strengths), print its expanded cells, and say what a run here would
    skip (missing weights, model folders, hub models offline) with the run's own messages."""
    try:
        s = _load(suite)
        _print_plan(s, out)
        skips = _probe_skips(s) if probe else []
    except WmbenchError as e:
        raise _fail(e) from None
    for what, reason in skips:
        err.print(f"[yellow]would skip[/] {escape(what)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if skips and strict:
        raise typer.Exit(1)
    out.print("[green]ok" + (f" ({len(skips)} would be skipped)" if skips else ""))


def _probe_skips(suite: Any) -> list[tuple[str, str]]:
    """(what, reason) for every method or attack a run on this machine would skip."""
    from wmbench.preflight import probe_plan
    from wmbench.suite import expand

    plan = expand(suite)
    av = probe_plan(plan)
    return [(f"method {k}", v) for k, v in av.methods.items()] + [
        (f"attack {plan.attacks[i].label}", v) for i, v in av.attacks.items()
    ]


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="suite YAML file")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", parser=_out_path, help="run folder (default results/<suite name>)"),
    ] = None,
    fresh: Annotated[bool, typer.Option(help="discard earlier results in the run folder")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the expanded cells and exit")] = False,
    device: Annotated[str | None, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:1 …")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the suite's batch size")] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(help="images per unit of work (default: the suite's, else 256); memory O(shard)"),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local (this process) or ray (Ray actors: a local instance, or --address)")
    ] = "local",
    workers: Annotated[
        int, typer.Option(help="Ray workers (actors); each owns a GPU when the cluster has them")
    ] = 1,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (e.g. auto, or ray://head:10001); default: start one here"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="use only the first N images (quick profile)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Run a suite: embed, attack, extract, score; resumable (rerun continues where it stopped).

    Values never depend on --batch-size, --shard-size, --executor or --workers, so a resume may change them."""
    painter, res = None, None
    try:
        s = _load(suite, limit)
        if dry_run:
            _print_plan(s, out)
            return
        from wmbench.painter import Painter

        painter = Painter.start()  # imports matplotlib in another process while this one runs the suite
        from wmbench.runner import Runner, RunOptions

        if (
            limit is not None and out_dir is None
        ):  # a quick profile must not collide with the full run's folder
            out_dir = Path("results") / f"{s.name}-limit{limit}"
        runner = Runner(
            s,
            RunOptions(
                out=out_dir,
                fresh=fresh,
                device=device,
                batch_size=batch_size,
                shard_size=shard_size,
                executor=executor,
                workers=workers,
                address=address,
                progress=progress,
            ),
            console=err,
        )
        res = runner.run()
    except WmbenchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if painter is not None and res is None:  # failed or interrupted: stop the helper now
            painter.kill()
            painter.close()
    from wmbench.report import summary_table, write_report  # pandas tables; figures by the painter

    try:
        report = write_report(res.out, painter)
    finally:
        if painter is not None:
            painter.close()
    tm = res.manifest
    if not tm.get("n_rows"):
        err.print(
            f"[red]nothing ran: every cell was skipped or failed; the reasons are in {report}", soft_wrap=True
        )
        raise typer.Exit(1)
    out.print(summary_table(res.out))
    out.print(f"{tm['n_rows']} rows · wall {tm['wall_s']} s · device {tm['device']}")
    out.print(f"run folder: [bold]{res.out}[/]", soft_wrap=True)
    out.print(f"report: {report} (and report.html)", soft_wrap=True)
    if res.errors:
        err.print(f"[red]{len(res.errors)} error(s) recorded in {res.out / 'manifest.json'}")
        raise typer.Exit(1)


@app.command()
def report(
    run: Annotated[list[Path], typer.Argument(help="run folder(s); several are merged into one report")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            parser=_out_path,
            help="where to write (default: the run folder, or results/report-A+B for several runs)",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="print nothing")] = False,
    pool: Annotated[
        bool,
        typer.Option(
            help="merge runs even when their images, seeds or target FPRs differ (the report says so)"
        ),
    ] = False,
) -> None:
    """Write report.md, a self-contained report.html and PNG plots; print the paths written."""
    from wmbench.report import build_report

    target = out_dir or (
        run[0] if len(run) == 1 else Path("results") / ("report-" + "+".join(r.name for r in run))
    )
    try:
        files = build_report(run, target, pool=pool)
    except WmbenchError as e:
        raise _fail(e) from None
    if not quiet:
        pngs = [p for k, p in files.items() if k not in ("md", "html")]
        out.print(f"{files['html']}\n{files['md']}", soft_wrap=True, highlight=False, markup=False)
        out.print(f"+ {len(pngs)} PNG in {files['md'].parent}", soft_wrap=True, highlight=False, markup=False)


@app.command()
def score(
    ref: Annotated[Path, typer.Argument(help="reference image file or folder")],
    test: Annotated[Path, typer.Argument(help="test image file or folder (paired by file name)")],
    metrics: Annotated[str | None, typer.Option(help="comma-separated subset, e.g. psnr,lpips")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
) -> None:
    """Print PSNR / SSIM / MS-SSIM / LPIPS of TEST against REF as JSON."""
    from wmbench.runner import resolve_device
    from wmbench.score import score_paths

    try:
        names = [m.strip() for m in metrics.split(",")] if metrics else None
        res = score_paths(ref, test, names, device=str(resolve_device(device)))
    except WmbenchError as e:
        raise _fail(e) from None
    sys.stdout.write(json.dumps(res, indent=2, default=float) + "\n")


@app.command()
def summarize(
    run: Annotated[Path, typer.Argument(help="run folder")],
    out_file: Annotated[
        Path,
        typer.Argument(parser=_out_path, help="summary JSON to write (e.g. results/baselines/ci.json)"),
    ],
) -> None:
    """Write a run's per-cell figures with 95% intervals, paired comparisons and rankings as a small JSON (a
    baseline for `wmbench compare`)."""
    from wmbench.compare import write_summary

    try:
        if out_file.is_dir():
            raise WmbenchError(
                f"summarize: {out_file} is a folder; give a file, e.g. {out_file / 'summary.json'}"
            )
        p = write_summary(run, out_file)
    except WmbenchError as e:
        raise _fail(e) from None
    except OSError as e:
        raise _fail(WmbenchError(f"summarize: cannot write {out_file}: {e.strerror or e}")) from None
    out.print(f"written {p}")


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="baseline run folder or summary .json")],
    new: Annotated[Path, typer.Argument(help="new run folder or summary .json")],
    tol_acc: Annotated[
        float, typer.Option(parser=_tolerance, help="allowed drop of bit accuracy / TPR (>= 0)")
    ] = 0.02,
    tol_psnr: Annotated[
        float, typer.Option(parser=_tolerance, help="allowed drop of watermark PSNR (dB, >= 0)")
    ] = 0.3,
    show_all: Annotated[bool, typer.Option("--all", help="print every cell, not only changed ones")] = False,
) -> None:
    """Compare two runs per method × attack × strength; exit 1 on a regression beyond tolerance or missing cells."""
    from wmbench.compare import compare as do_compare
    from wmbench.compare import fmt_range, load_summary

    try:
        res = do_compare(load_summary(baseline), load_summary(new), tol_acc, tol_psnr)
    except WmbenchError as e:
        raise _fail(e) from None
    t = Table(
        "method",
        "attack",
        "strength",
        "bit_acc base→new",
        "new 95% CI",
        "Δ",
        "TPR base→new",
        "new 95% CI",
        "Δ",
        "PSNR Δ",
        "status",
        title=f"compare (tol acc {tol_acc:g}, psnr {tol_psnr:g} dB; * = change beyond a 95% CI)",
    )
    for _, r in res.table.iterrows():
        if not show_all and r["status"] == "ok" and not r["beyond_noise"]:
            continue
        style = {"REGRESSION": "red", "improved": "green"}.get(r["status"], "")
        t.add_row(
            r["method"],
            r["attack"],
            f"{r['strength']:g}",
            f"{r['bit_acc_base']:.3f}→{r['bit_acc_new']:.3f}",
            fmt_range(r["bit_acc_lo_new"], r["bit_acc_hi_new"]),
            f"{r['d_bit_acc']:+.3f}" + ("*" if r["beyond_noise"] else ""),
            f"{r['tpr_base']:.3f}→{r['tpr_new']:.3f}",
            fmt_range(r["tpr_lo_new"], r["tpr_hi_new"]),
            f"{r['d_tpr']:+.3f}",
            f"{r['d_psnr']:+.2f}",
            r["status"],
            style=style,
        )
    out.print(t)
    for m in res.missing:
        out.print(f"[red]missing in new run: {m[0]} × {m[1]} {m[2]:g}")
    for m in res.added:
        out.print(f"[yellow]new cell (not in baseline): {m[0]} × {m[1]} {m[2]:g}")
    for _, r in res.table[res.table["status"] == "REGRESSION"].iterrows():  # plain lines for logs
        out.print(
            f"REGRESSION {r['method']} × {r['attack']} {r['strength']:g}: bit_acc {r['bit_acc_base']:.3f}→"
            f"{r['bit_acc_new']:.3f}, TPR {r['tpr_base']:.3f}→{r['tpr_new']:.3f}, "
            f"PSNR {r['psnr_base']:.2f}→{r['psnr_new']:.2f}",
            markup=False,
            highlight=False,
        )
    n_reg = int((res.table["status"] == "REGRESSION").sum())
    out.print(
        f"{len(res.table)} cells compared: {n_reg} regressions, {len(res.missing)} missing, "
        f"{len(res.added)} added"
    )
    raise typer.Exit(1 if res.regressed else 0)


@app.command()
def calibrate(
    method: Annotated[str, typer.Argument(help="registered method name (wmbench list methods)")],
    count: Annotated[int, typer.Option(help="clean images to decode (>= 1000 to resolve FPR 1e-3)")] = 1000,
    size: Annotated[int, typer.Option(help="image side in px")] = 128,
    folder: Annotated[
        Path | None, typer.Option(help="decode this folder's images instead of built-in crops")
    ] = None,
    target_fpr: Annotated[float, typer.Option(help="false-positive rate the threshold should give")] = 1e-3,
    params: Annotated[str | None, typer.Option(help="method params as JSON, e.g. '{\"sync\": true}'")] = None,
    seed: Annotated[int, typer.Option(help="seed of the crops and of the fixed key")] = 0,
    split: Annotated[str, typer.Option(help="built-in photos: all, eval or train")] = "all",
    batch_size: Annotated[int, typer.Option(help="images per extract call")] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda, auto …")] = "cpu",
    out_file: Annotated[
        Path | None, typer.Option("--out", parser=_out_path, help="also write the JSON to this file")
    ] = None,
) -> None:
    """Decode N clean images and check the analytic FPR: matching bits vs Binomial(k, 1/2), measured FPR with
    its exact interval, the empirical threshold; prints JSON (docs/statistics.md)."""
    from wmbench.calibrate import calibrate as do_calibrate
    from wmbench.calibrate import clean_json

    try:
        p = json.loads(params) if params else {}
        if not isinstance(p, dict):
            raise WmbenchError(f"--params must be a JSON object, got {params!r}")
        res = do_calibrate(
            method,
            p,
            count=count,
            size=size,
            folder=str(folder) if folder else None,
            target_fpr=target_fpr,
            seed=seed,
            split=split,
            batch_size=batch_size,
            device=device,
        )
    except json.JSONDecodeError as e:
        raise _fail(WmbenchError(f"--params is not valid JSON: {e}")) from None
    except WmbenchError as e:
        raise _fail(e) from None
    text = json.dumps(clean_json(res), indent=1) + "\n"
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text)
    sys.stdout.write(text)


@app.command()
def train(
    config: Annotated[
        str, typer.Argument(help="training config: a YAML file or a packaged name (hidden, tiny)")
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", parser=_out_path, help="output folder (default results/train/<config name>)"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the folder's checkpoint")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda …")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="stop at this step (checkpoint + card marked incomplete)")
    ] = None,
) -> None:
    """Train a learned model (seeded, resumable); writes <name>.safetensors + a card, a JSONL log, checkpoints."""
    from wmbench.train import train as do_train

    target = out_dir or Path("results") / "train" / Path(config).stem
    try:
        weights = do_train(config, target, resume=resume, device=device, max_steps=max_steps)
    except WmbenchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted: resume with `wmbench train {config} --out {target} --resume`")
        raise typer.Exit(130) from None
    from wmbench.train import FOLDER_CARD

    card = (
        weights / FOLDER_CARD if weights.is_dir() else weights.with_suffix(".json")
    )  # diffusers: inside the folder
    out.print(f"weights: {weights}  card: {card}", soft_wrap=True)


def main() -> None:
    """The console script: ``app``, then a quick exit.

    Why: tearing down the interpreter after a run (module by module: torch, pandas, pyarrow, matplotlib) took
    ~2 s here, longer than writing the report.  The exit handlers still run (a Ray driver's shutdown, thread pools,
    temp-file finalizers, logging), the streams are flushed, and only the module teardown is skipped — everything
    the command wrote is already closed.  In-process callers (tests, ``typer.testing``) use ``app`` itself."""
    import atexit

    code: int | str | None = 0
    try:
        app()
    except SystemExit as e:
        code = e.code
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if isinstance(code, str):  # SystemExit("message"): print it as the interpreter would
        sys.stderr.write(code + "\n")
        sys.stderr.flush()
        code = 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
