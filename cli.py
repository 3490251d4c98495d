"""ganseg command line: each command parses, loads config and calls one toolkit function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

import toolkit

PROFILES = ("smoke", "quick", "full")


def _load_plugins(plugins: tuple[str, ...]) -> None:
    from toolkit.registry import load_plugin_dir

    for folder in plugins:
        try:
            load_plugin_dir(folder)
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from None


plugins_option = click.option(
    "--plugins", "plugins", multiple=True, type=click.Path(file_okay=False),
    help="Folder of extra plugin .py files to load (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(toolkit.__version__, prog_name="ganseg")
def main() -> None:
    """Train generators of synthetic prostate MR (image, mask) pairs and rank them by the Dice
    gain their pairs give a downstream U-Net on held-out real patients."""


@main.command("list")
@plugins_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def list_cmd(plugins: tuple[str, ...], as_json: bool) -> None:
    """List registered generators and evaluators, where they come from, and plugins that failed to load."""
    from toolkit.registry import EVALUATORS, GENERATORS

    _load_plugins(plugins)
    report = {}
    for label, registry in (("generators", GENERATORS), ("evaluators", EVALUATORS)):
        entries = []
        for entry in registry.entries():
            item = {"name": entry.name, "source": entry.source, "summary": _first_line(entry.obj.__doc__)}
            if label == "evaluators":
                item.update(primary=entry.obj.primary, higher_is_better=entry.obj.higher_is_better,
                            metrics=list(entry.obj.metrics))
            entries.append(item)
        report[label] = entries
    errors = {e.source: e.error for e in GENERATORS.errors + EVALUATORS.errors}
    report["errors"] = [{"source": s, "error": e} for s, e in errors.items()]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for label in ("generators", "evaluators"):
        click.echo(f"{label}:")
        for item in report[label] or [{"name": "(none)", "source": "", "summary": ""}]:
            click.echo(f"  {item['name']:<16} {item['summary']}  [{item['source']}]".rstrip())
    if report["errors"]:
        click.echo("failed to load:")
        for item in report["errors"]:
            click.echo(f"  {item['source']}: {item['error']}")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def _resolve_config(generator, profile, config_files, overrides, data, device):
    from toolkit.config import ConfigError, resolve

    overrides = list(overrides)
    if data is not None:
        overrides.append(f"data.path={data}")
    if device is not None:
        overrides.append(f"train.device={device}")
    try:
        return resolve(generator=generator, profile=profile, config_files=config_files, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--generator", "-g", default=None, help="Generator to train (see `list`); default: run.generator of the config.")
@click.option("--profile", "-p", type=click.Choice(PROFILES), default="quick",
              help="smoke: seconds, for checks; quick: ~10 min on 2 CPU cores; full: a GPU-length run.")
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Extra YAML config layered over the profile (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config value, e.g. --set train.steps=200 (repeatable).")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Folder of real volumes (msd, folders, promise12 layout) or a pairs .csv; default: the embedded phantom.")
@click.option("--name", default=None, help="Run name; default: <generator>-<timestamp>.")
@click.option("--out", type=click.Path(file_okay=False), default="runs", help="Parent folder of run directories.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (overrides train.device).")
@click.option("--force", is_flag=True, help="Delete and replace an existing run of the same name.")
@click.option("--resume", is_flag=True, help="Continue the run named by --name from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or log lines on the console.")
@plugins_option
def run(generator, profile, config_files, overrides, data, name, out, device, force, resume, dry_run, quiet, plugins):
    """Train a generator on the training patients, sample a synthetic set and evaluate it.

    Writes runs/<name>/: config.yaml, split.json, log.txt, metrics.jsonl,
    checkpoints/, synthetic/, results.json and TensorBoard events.
    """
    from toolkit.config import ConfigError
    from toolkit.experiment import RunError, load_run_config, run_experiment, summary_table
    from toolkit.plugin import PluginCallError
    from toolkit.rundir import default_run_name
    from toolkit.train.checkpoint import CheckpointError
    from toolkit.train.loop import TrainingInterrupted

    _load_plugins(plugins)
    if resume:
        if not name:
            raise click.ClickException("--resume needs --name NAME of the run to continue (see the runs/ folder)")
        if generator or config_files or data:
            raise click.ClickException("--resume continues a run with its saved config; only --set may change it")
        try:
            config = load_run_config(Path(out) / name, tuple(overrides))
        except (ConfigError, RunError) as exc:
            raise click.ClickException(str(exc)) from None
    else:
        config = _resolve_config(generator, profile, config_files, overrides, data, device)
    if dry_run:
        click.echo(config.to_yaml(), nl=False)
        return
    name = name or default_run_name(config.run.generator)
    try:
        run_dir = run_experiment(config, out=out, name=name, force=force, resume=resume, quiet=quiet)
    except TrainingInterrupted as exc:
        click.echo(f"\n{exc}: python cli.py run --resume --name {name} --out {out}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted. Whatever finished is kept in {Path(out) / name}: continue training with "
                   f"`python cli.py run --resume --name {name} --out {out}`, or re-score a finished synthetic set "
                   f"with `python cli.py evaluate --run {Path(out) / name}`", err=True)
        sys.exit(130)
    except PluginCallError as exc:
        _plugin_bug(exc)
    except (RunError, ValueError, OSError, CheckpointError) as exc:
        raise click.ClickException(str(exc)) from None
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    if not quiet:
        click.echo("\n" + summary_table(results))
    click.echo(f"\nResults: {run_dir / 'results.json'}   Synthetic set: {run_dir / 'synthetic'}\n"
               f"TensorBoard: tensorboard --logdir {Path(out)}")


def _plugin_bug(exc: BaseException) -> None:
    """A plugin's own exception: one line naming plugin, call and step, then its traceback (the author needs it)."""
    import traceback

    click.echo(f"Error: {exc}", err=True)
    cause = exc.__cause__ or exc
    click.echo("".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip(), err=True)
    sys.exit(1)


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Run directory to re-evaluate (runs/<name>).")
@click.option("--evaluators", default=None, help="Comma-separated evaluator names; default: the run's run.evaluators.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="No log lines on the console.")
@plugins_option
def evaluate(run_dir, evaluators, overrides, quiet, plugins):
    """Re-evaluate an existing run's synthetic set with its saved config and split."""
    from toolkit.config import ConfigError
    from toolkit.experiment import RunError, evaluate_run, summary_table
    from toolkit.registry import RegistryError

    _load_plugins(plugins)
    names = [n.strip() for n in evaluators.split(",") if n.strip()] if evaluators else None
    try:
        results = evaluate_run(run_dir, names, tuple(overrides), quiet=quiet)
    except (ConfigError, RunError, RegistryError, ValueError, OSError) as exc:  # OSError: WriteError (a full disk)
        raise click.ClickException(str(exc)) from None
    click.echo(summary_table(results))


@main.command()
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding run directories (default: runs).")
@click.option("--evaluator", default="dice_gain", help="Evaluator whose results rank the runs.")
@click.option("--metric", default=None, help="Metric to rank by; default: the evaluator's primary metric.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--validity", "validity", is_flag=True, help="Instead of a ranking: how well each quality metric "
              "predicts the Dice gain (Kendall tau, Spearman rho, bootstrap CIs) over every scored cell of the "
              "FOLDERS (benchmark folders, archives or runs, and recorded validity_cells.csv files).")
@click.option("--mode", default=None, help="--validity: the usage mode whose gain is the truth (default: each "
              "cell's primary dice_gain); all: one cell per (run, scored mode). Cells of several modes, "
              "augmentation levels, regimes or ratios are ranked within each only (a stratified statistic).")
@click.option("--validity-out", type=click.Path(file_okay=False), default=None,
              help="--validity: folder for validity.md/.csv/.json, the scatter plots and TensorBoard; default: "
              "FOLDER/validity of the first folder.")
@click.argument("folders", nargs=-1, type=click.Path(exists=True))
def leaderboard(runs_dir, evaluator, metric, as_json, validity, mode, validity_out, folders):
    """Rank finished runs by one evaluator's metric, in groups of comparable runs (same data, test patients
    and evaluator settings); gains whose 95% CI includes 0 are marked. With --validity FOLDERS...: which cheap
    metric predicts the gain."""
    from toolkit.leaderboard import collect, format_leaderboard, rank
    from toolkit.rundir import RunError

    if validity:
        _validity(folders or (runs_dir or "runs",), mode, validity_out, as_json)
        return
    if folders:
        raise click.ClickException(f"FOLDERS ({', '.join(folders)}) are read with --validity only; rank runs "
                                   "with --runs DIR")
    runs_dir = runs_dir or "runs"
    if not Path(runs_dir).is_dir():
        raise click.ClickException(f"--runs {runs_dir}: no such folder; name the folder that holds your runs")
    try:
        groups = rank(collect(runs_dir, evaluator), metric)
    except RunError as exc:  # a damaged results.json, config.yaml or split.json, named
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(groups, indent=2, default=str) if as_json else format_leaderboard(groups))


def _validity(folders: tuple[str, ...], mode: str | None, out: str | None, as_json: bool) -> None:
    """leaderboard --validity: the table, its files, scatter plots and TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    from toolkit.rundir import RunError
    from toolkit.validity import (
        MIN_CELLS,
        collect_cells,
        format_markdown,
        log_tensorboard,
        metric_validity,
        write_plots,
        write_validity,
    )

    try:
        cells = collect_cells(folders, mode)
    except (RunError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if len(cells) < MIN_CELLS:
        raise click.ClickException(f"--validity: {len(cells)} scored cell(s) in {', '.join(folders)}; a rank "
                                   f"correlation needs at least {MIN_CELLS} (benchmark folders, or runs with dice_gain results)")
    rows = metric_validity(cells)
    first = Path(folders[0])
    target = Path(out) if out else (first.parent if first.is_file() else first) / "validity"
    written = [*write_validity(target, rows, cells), *write_plots(target, rows, cells)]
    writer = SummaryWriter(log_dir=str(target / "tensorboard"))
    try:
        log_tensorboard(writer, rows, cells)
    finally:
        writer.close()
    click.echo(json.dumps(rows, indent=2, default=str) if as_json else format_markdown(rows))
    click.echo(f"{len(cells)} cells; files: {target} ({len(written)} written), TensorBoard: {target / 'tensorboard'}")


def _names(text: str | None, option: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list of choices, in order, once each; () when not given."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise click.ClickException(f"{option}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    return names


def _numbers(text: str, option: str) -> tuple[float, ...]:
    """A comma list of positive numbers, in the order given."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.ClickException(f"{option} {text}: give comma-separated numbers, e.g. 600,2400") from None
    if not values or any(v <= 0 for v in values):
        raise click.ClickException(f"{option} {text}: every value must be > 0")
    return values


@main.command()
@click.option("--generators", default=None, help="Comma-separated generators; default: every registered one.")
@click.option("--profile", "-p", type=click.Choice(PROFILES), default="quick", help="Settings of every cell.")
@click.option("--data", type=click.Path(exists=True), default=None, help="Folder of real volumes; default: the phantom.")
@click.option("--train-patients", default=None, help="Comma-separated regimes (real training patients), e.g. 2,4,8; "
              "default: the profile's split.n_train_patients.")
@click.option("--ratios", default="1", help="Comma-separated synthetic:real ratios, e.g. 0.5,1,2.")
@click.option("--draws", type=click.IntRange(min=1), default=1, help="Training-patient subsets per regime.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, help="Generator seeds per (regime, draw).")
@click.option("--jobs", type=click.IntRange(min=0), default=0,
              help="Cells run at once; 0: one per CPU core (local) or per cluster CPU (ray).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              help="local: a process pool on this machine; ray: one Ray task per cell (pip install -e \".[ray]\").")
@click.option("--ray-address", default=None, help="--executor ray: the cluster to join (auto, ray://HOST:10001); "
              "default: $RAY_ADDRESS, else a local Ray instance.")
@click.option("--budget", type=click.Choice(["steps", "seconds"]), default="steps",
              help="Equal budgets: the profile's train.steps for every generator, or --budget-seconds each.")
@click.option("--budget-seconds", default=None,
              help="--budget seconds: training seconds per generator (sets train.max_seconds in every cell); "
              "several, comma-separated and increasing, make a nested budget dimension like --train-steps.")
@click.option("--train-steps", default=None, help="A budget dimension: comma-separated increasing train.steps, "
              "e.g. 600,2400,4800; the longer cell continues the shorter one's checkpoint (the curve costs the "
              "longest budget) and each budget is scored as its own leaderboard row. Default: the profile's.")
@click.option("--modes", default=None, help="Comma-separated usage modes every trained cell is scored under "
              "(replace, add, pretrain; arms of one evaluation, the first is the primary gain); default: the "
              "config's evaluators.dice_gain.modes.")
@click.option("--seg-augment", default=None, help="Comma-separated segmenter augmentation levels (none, standard, "
              "strong): each trained cell's synthetic set is scored under every level, baselines per level; "
              "default: the config's seg.augment.")
@click.option("--plan", "plan_only", is_flag=True, help="Estimate the draws x seeds --target-effect needs and "
              "their wall time on this machine, then exit without training.")
@click.option("--target-effect", type=click.FloatRange(min=0, min_open=True), default=0.03,
              help="--plan: the Dice gain to detect with 80% power.")
@click.option("--from", "from_path", type=click.Path(exists=True, file_okay=False), default=None,
              help="--plan: a benchmark folder (or a folder of runs) to take variance components and times from.")
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Extra YAML config for every cell (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value in every cell.")
@click.option("--name", default=None, help="Benchmark folder name; the same name and options continue it.")
@click.option("--out", type=click.Path(file_okay=False), default="runs", help="Parent folder.")
@plugins_option
def benchmark(generators, profile, data, train_patients, ratios, draws, seeds, jobs, executor, ray_address, budget,
              budget_seconds, train_steps, modes, seg_augment, plan_only, target_effect, from_path, config_files, overrides, name, out, plugins):
    """Rank generators by Dice gain over regimes x ratios x draws x seeds on one leaderboard.

    Each cell is a whole run under <out>/<name>/cells/; baselines are trained once per (regime, draw, U-Net seed)
    and shared; an interrupted benchmark continues where it stopped. Writes leaderboard.md/.csv/.json and plots/.
    """
    from toolkit.bench import (
        Plan,
        RayMissing,
        check_plan,
        core_overrides,
        describe,
        estimate_plan,
        format_estimate,
        make_executor,
        ray_installed,
        run_benchmark,
    )
    from toolkit.config import ConfigError
    from toolkit.registry import GENERATORS, RegistryError
    from toolkit.rundir import RunError
    from toolkit.train.checkpoint import CheckpointError

    if executor == "ray" and not plan_only and not ray_installed():
        raise click.ClickException('--executor ray needs the ray package: pip install -e ".[ray]" (or pip install '
                                   '"ray>=2.9")')
    if budget == "seconds" and budget_seconds is None:
        raise click.ClickException("--budget seconds needs --budget-seconds S: the training seconds every "
                                   "generator gets")
    if budget == "steps" and budget_seconds is not None:
        raise click.ClickException("--budget-seconds needs --budget seconds")
    if budget == "seconds" and train_steps is not None:
        raise click.ClickException("--train-steps needs --budget steps (the default); with --budget seconds give "
                                   "several --budget-seconds, e.g. 60,240")
    seconds = _numbers(budget_seconds, "--budget-seconds") if budget_seconds is not None else ()
    steps = _numbers(train_steps, "--train-steps") if train_steps is not None else ()
    if steps and any(v != int(v) for v in steps):
        raise click.ClickException(f"--train-steps {train_steps}: whole numbers of steps, e.g. 600,2400,4800")
    budgets = steps or (seconds if len(seconds) > 1 else ())
    if list(budgets) != sorted(set(budgets)):
        raise click.ClickException(f"{'--train-steps' if steps else '--budget-seconds'} "
                                   f"{train_steps or budget_seconds}: give increasing values (each budget "
                                   "continues the one before)")
    _load_plugins(plugins)
    extra = [f"data.path={data}"] if data else []
    try:
        base = _resolve_config(None, profile, config_files, (*core_overrides(overrides), *extra), None, None)
        names = tuple(n.strip() for n in generators.split(",") if n.strip()) if generators else \
            tuple(GENERATORS.names())
        regimes = tuple(int(v) for v in train_patients.split(",")) if train_patients else \
            (base.split.n_train_patients,)
        if None in regimes:
            raise click.ClickException("--train-patients: the profile trains on every pool patient; give the "
                                       "regimes, e.g. --train-patients 2,4")
        plan = Plan(generators=names, regimes=regimes, ratios=tuple(float(v) for v in ratios.split(",")),
                    draws=draws, seeds=seeds, profile=profile, config_files=tuple(config_files),
                    overrides=(*overrides, *extra), budget=budget,
                    budget_seconds=seconds[0] if len(seconds) == 1 else None, budgets=budgets,
                    modes=_names(modes, "--modes", ("replace", "add", "pretrain")),
                    seg_augment=_names(seg_augment, "--seg-augment", ("none", "standard", "strong")))
        if plan_only:
            click.echo(format_estimate(estimate_plan(plan, target_effect, from_path=from_path, jobs=jobs,
                                                      plugins=plugins)))
            return
        check_plan(plan)  # before an executor (a Ray instance) starts
        run = make_executor(executor, jobs, ray_address)
        click.echo(f"benchmark: {describe(plan)}, executor {executor}, {run[1]} thread(s) per cell")
        bench = run_benchmark(plan, out=out, name=name, executor=run, plugins=plugins)
    except ValueError as exc:  # a bad number in a comma list
        raise click.ClickException(str(exc)) from None
    except (ConfigError, RegistryError, RunError, RayMissing, OSError, CheckpointError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo((bench / "leaderboard.md").read_text())
    click.echo(f"Leaderboard: {bench / 'leaderboard.md'} (.csv, .json), plots: {bench / 'plots'}")


@main.command()
@click.argument("bench", type=click.Path(file_okay=False, exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
def archive(bench, dest):
    """Keep a benchmark's evidence in DEST (e.g. benchmarks/results/NAME): every finished cell's scores,
    per-patient Dice, config and split, no checkpoints or images, small enough to commit.

    Copied back under --out, the same benchmark command with more --draws continues it: the archived cells
    are kept and pooled with the new ones in one leaderboard.
    """
    from toolkit.bench.archive import archive_benchmark
    from toolkit.rundir import RunError

    try:
        summary = archive_benchmark(bench, dest)
    except (RunError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    left = f"; {len(summary['left_out'])} unfinished cell(s) left out" if summary["left_out"] else ""
    click.echo(f"archived {summary['cells']} cells of {bench} in {dest} ({summary['bytes'] / 1e3:.0f} kB){left}")


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Run directory whose synthetic set to export (runs/<name>).")
@click.option("--format", "fmt", required=True, type=click.Choice(["nifti", "nnunet", "png"]),
              help="nifti: imagesTr/labelsTr + Decathlon dataset.json (MONAI); nnunet: an nnU-Net v2 raw "
                   "DatasetXXX_Name folder; png: 8-bit image / 0-255 mask pairs.")
@click.option("--with-real", is_flag=True, help="Add the run's real training slices (never validation or test patients).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write; nnunet: the folder to write DatasetXXX_Name into (e.g. $nnUNet_raw). "
                   "Default: <run>/export/<format>.")
@click.option("--dataset-id", type=click.IntRange(1, 999), default=500, help="nnunet: the three-digit dataset id.")
@click.option("--dataset-name", default=None, help="nnunet: the dataset name; default: Ganseg<RunName>.")
@click.option("--force", is_flag=True, help="Replace an earlier export in the same folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="--with-real: override the run's config when reading its data, e.g. --set data.path=NEW (repeatable).")
@plugins_option
def export(run_dir, fmt, with_real, out, dataset_id, dataset_name, force, overrides, plugins):
    """Export a run's synthetic (image, mask) pairs as NIfTI, an nnU-Net v2 dataset or PNG pairs."""
    from toolkit.config import ConfigError
    from toolkit.data import DataError
    from toolkit.export import ExportError, export_run
    from toolkit.rundir import RunError

    _load_plugins(plugins)
    try:
        summary = export_run(run_dir, fmt, out, with_real=with_real, force=force, dataset_id=dataset_id,
                             dataset_name=dataset_name, overrides=tuple(overrides))
    except ConfigError as exc:
        raise click.ClickException(f"{exc}\n(the run's config must load to read its real data: a plugin generator "
                                   "needs --plugins DIR)") from None
    except (ExportError, RunError, DataError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    real = f" + {summary.n_real} real training slices ({len(summary.real_patients)} patients)" if summary.n_real else ""
    click.echo(f"wrote {summary.n_synthetic} synthetic{real} as {fmt} to {summary.path}")
    if fmt == "nnunet":
        dataset = summary.path.name[len("Dataset"):len("Dataset") + 3]
        click.echo(f"nnU-Net: nnUNet_raw={summary.path.parent} nnUNetv2_plan_and_preprocess -d {int(dataset)} "
                   f"-c 2d --verify_dataset_integrity")


@main.command("new-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(["generator", "evaluator"]), default="generator",
              help="Which kind of plugin to write.")
@click.option("--template", type=click.Choice(["gan", "pairs", "mask2image"]), default=None,
              help="Generator template: gan (G + D of (image, mask) pairs, non-saturating loss), pairs (a tiny "
                   "joint VAE of (image, mask)), mask2image (paints masks from the mask source). Default: gan.")
@click.option("--out", type=click.Path(file_okay=False), default="my_plugins", help="Folder to write NAME.py into.")
def new_plugin_cmd(name, kind, template, out):
    """Write a small working generator or evaluator file to start your own from."""
    from toolkit.scaffold import new_plugin

    try:
        path = new_plugin(name, kind, out, template)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    if kind == "generator":
        use = f"python cli.py run --generator {name} --plugins {out}"
    else:
        use = f"python cli.py evaluate --run runs/NAME --evaluators {name} --plugins {out}"
    click.echo(f"wrote {path}\nlist it: python cli.py list --plugins {out}\nuse it:  {use}\n"
               f"test it: GANSEG_PLUGINS={out} python -m pytest tests/test_contract.py")


@main.group()
def data() -> None:
    """Make the embedded phantom data set, or inspect a data folder."""


@data.command("phantom")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (msd layout).")
@click.option("--patients", type=click.IntRange(min=1), default=32, help="Number of phantom patients.")
@click.option("--seed", type=int, default=0, help="Anatomy seed; the same seed gives the same volumes.")
def data_phantom(out, patients, seed):
    """Write the procedural pelvic MR phantom as NIfTI volumes in the Decathlon (msd) layout."""
    from toolkit.data.phantom import write_phantom

    path = write_phantom(Path(out), n_patients=patients, seed=seed)
    click.echo(f"wrote {patients} phantom patients to {path}")


@data.command("inspect")
@click.option("--data", "path", required=True, type=click.Path(exists=True),
              help="Data folder, or a pairs .csv manifest.")
@click.option("--layout", type=click.Choice(["auto", "msd", "folders", "promise12", "pairs"]), default="auto",
              help="Data layout; auto detects it.")
@click.option("--image-name", default=None, help="folders layout: image file name in each patient folder.")
@click.option("--mask-name", default=None, help="folders layout: mask file name in each patient folder.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def data_inspect(path, layout, image_name, mask_name, as_json):
    """Report the layout found, patients, slices, shapes, spacing, label values and class balance.

    Exits with status 1 when the data would fail a run with the default settings (e.g. empty masks),
    so it can gate a script; the report says which setting would let such data through.
    """
    from toolkit.data import DataError
    from toolkit.data.inspect import format_inspection, inspect_dataset

    try:
        info = inspect_dataset(Path(path), layout=layout, image_name=image_name, mask_name=mask_name)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))
    if info["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
