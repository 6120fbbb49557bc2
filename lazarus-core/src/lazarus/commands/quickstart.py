"""``lazarus quickstart``: the whole loop as a recipe, offline, in a few minutes on a CPU.

On the embedded model ``lazarus:tiny-math`` (pretrained by Lazarus on arithmetic *equations*, never
taught to answer questions), it generates math data, then runs the recipe shipped next to this
module (``quickstart.toml.j2``): evaluate → sft → evaluate → grpo (or dpo) → evaluate → logit lens,
and reports after each stage the accuracy on held-out questions (a correct final number in any
form: the answer sentence or the equation's result) with its 95% interval, the answer-format
compliance beside it, what the RL stage moved, and where in the layers the answer appears. The
rendered recipe is kept in the output directory, so ``lazarus run OUTPUT/quickstart.toml`` repeats
or continues it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from lazarus.errors import LazarusError
from lazarus.options import SEED

MARKER = "quickstart.json"
RECIPE = "quickstart.toml"
TEMPLATE = Path(__file__).resolve().parent.parent / "quickstart.toml.j2"

#: the full quickstart and a short one (--fast: tests, a first look)
SIZES = {
    "full": {"eval_limit": 100, "sft_steps": 500, "rl_steps": 20, "count": 2000},
    "fast": {"eval_limit": 30, "sft_steps": 300, "rl_steps": 6, "count": 600},
}
#: learning rates of the stages (LoRA rank 8, scale 20, on lazarus:tiny-math)
LEARNING_RATES = {"sft": 3e-4, "grpo": 2e-5, "dpo": 3e-5}
#: GRPO: prompts per step and completions per prompt
RL_BATCH, GROUP_SIZE = 4, 8
#: a held-out problem for the logit lens: the prompt up to the answer, and the answer
LENS_PROMPT = "Find the value of 65 + 28. 65 + 28 = "
LENS_ANSWER = "93"


@click.command()
@click.option("--output", "-o", default="quickstart-out", show_default=True, metavar="DIR",
              help="Work directory: data/, quickstart.toml and one folder per stage (reused when run again).")
@click.option("--model", "-m", default="lazarus:tiny-math", show_default=True, metavar="M",
              help="The model to start from: the embedded tiny-math model, or any checkpoint.")
@click.option("--rl", type=click.Choice(["grpo", "dpo"]), default="grpo", show_default=True,
              help="The stage after SFT: GRPO rewarded for exact answers (it generates 8 answers per "
                   "prompt each step), or DPO on preference pairs.")
@click.option("--fast", is_flag=True, help="A short run: fewer steps and test prompts.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the data and of training.")
def quickstart(output: str, model: str, rl: str, fast: bool, seed: int):
    """Evaluate, fine-tune (SFT, then GRPO or DPO), evaluate again and look inside, as one recipe.

    \b
    1. generate arithmetic problems in OUTPUT/data (sft/, preference/, prompts/)
    2. write the recipe OUTPUT/quickstart.toml and run it (`lazarus run`):
       eval -> sft -> eval -> grpo|dpo -> eval -> logit-lens
    3. show the model's accuracy on held-out questions after each stage (a correct final number in
       any form) with its 95% interval, the answer-format compliance beside it, what the RL stage
       moved, and the layer where the answer to a held-out problem becomes the top prediction

    Everything is offline. Run it again and finished stages are skipped.
    """
    from rich.console import Console

    from lazarus.paths import check_output_path

    console = Console()
    out = check_output_path(output, kind="dir")
    _check_output(out)
    size = SIZES["fast" if fast else "full"]
    data_dir = out / "data"

    console.rule("[bold]Lazarus quickstart")
    console.print(f"Model: {model}. Data: arithmetic problems from `lazarus data generate math` in {data_dir}.")
    _make_data(data_dir, size["count"], seed)
    recipe_path = _write_recipe(out, model, data_dir, rl, size, seed)
    console.print(f"Recipe: {recipe_path} (eval → sft → eval → {rl} → eval → logit-lens)")

    from lazarus.recipes import Runner, read_recipe

    recipe = read_recipe(recipe_path)
    runner = Runner(recipe, console=console)
    results = runner.run()
    if results and results[-1].status == "interrupted":
        console.print(f"Stopped. Run `lazarus quickstart --output {shlex.quote(str(out))}` (or `lazarus run "
                      f"{shlex.quote(str(recipe_path))}`) again to continue.")
        raise SystemExit(130)
    summary = _summary(out, rl)
    (out / MARKER).write_text(json.dumps({"model": model, "rl": rl, "fast": fast, "seed": seed, **summary},
                                         indent=2) + "\n")
    _report(console, out, summary, model, rl, recipe_path)


def _check_output(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and not (out / RECIPE).exists() and not (out / MARKER).exists():
        raise LazarusError(f"{out} exists and holds other files; pass --output with a new or empty "
                           "directory (a previous quickstart's directory is reused)")


def _make_data(data_dir: Path, count: int, seed: int) -> None:
    import warnings

    from lazarus.data.math import generate, write_math_data

    if (data_dir / "sft" / "train.jsonl").is_file() and (data_dir / ".count").is_file() and \
            (data_dir / ".count").read_text() == f"{count} {seed}":
        return  # the same data as last time: unchanged files keep finished stages skipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_math_data(generate(count, seed=seed), data_dir, valid_fraction=0.05, test_fraction=0.1, force=True)
    (data_dir / ".count").write_text(f"{count} {seed}")


def _write_recipe(out: Path, model: str, data_dir: Path, rl: str, size: dict, seed: int) -> Path:
    import jinja2

    template = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    text = template.render(
        model=model, output=str(out), test_prompts=str(data_dir / "prompts" / "test.jsonl"),
        sft_data=str(data_dir / "sft"), prompt_data=str(data_dir / "prompts"),
        preference_data=str(data_dir / "preference"), rl=rl, seed=seed, max_tokens=40,
        eval_limit=size["eval_limit"], sft_steps=size["sft_steps"], rl_steps=size["rl_steps"],
        sft_learning_rate=LEARNING_RATES["sft"], rl_learning_rate=LEARNING_RATES[rl],
        group_size=GROUP_SIZE, rl_batch_size=RL_BATCH, lens_prompt=LENS_PROMPT, lens_answer=LENS_ANSWER)
    path = out / RECIPE
    out.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        from lazarus.data.records import write_text_atomic

        write_text_atomic(path, text)
    return path


#: what the RL stage's metrics.jsonl shows it moved: (key, label) per trainer
RL_METRICS = {"grpo": (("reward_mean", "mean reward"), ("accuracy", "exact-answer rate of its samples")),
              "dpo": (("rewards/accuracy", "preference accuracy"), ("rewards/margin", "reward margin"))}


def _summary(out: Path, rl: str) -> dict:
    accuracy = {}
    for stage in ("before", "after-sft", f"after-{rl}"):
        path = out / stage / "summary.json"
        if path.is_file():
            data = json.loads(path.read_text())
            accuracy[stage] = {"accuracy": data.get("accuracy"), "ci95": data.get("accuracy_ci95"),
                               "rows": data.get("rows"), "correct": data.get("correct"),
                               "format": (data.get("rewards") or {}).get("format")}
    lens = {}
    lens_path = out / "logit-lens" / "result.json"
    if lens_path.is_file():
        result = json.loads(lens_path.read_text())
        position = result["positions"][-1]
        ranks = [layer.get("track_rank") for layer in position["layers"]]
        first_top = next((layer["layer"] for layer in position["layers"] if layer.get("track_rank") == 1), None)
        lens = {"prompt": result.get("prompt"), "answer": LENS_ANSWER, "layers": result.get("num_layers"),
                "answer_tokens": (result.get("track") or {}).get("tokens"),
                "final_prediction": position.get("final_prediction"), "answer_top1_layer": first_top,
                "answer_ranks": ranks}
    return {"accuracy": accuracy, "lens": lens, "rl_metrics": _rl_metrics(out / rl, rl)}


def _rl_metrics(run: Path, rl: str) -> dict:
    """``{key: [first, last]}`` over the RL run's logged training rows (what the stage moved)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    out = {}
    for key, _ in RL_METRICS[rl]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = [values[0], values[-1]]
    return out


def _gain_line(summary: dict, rl: str) -> str | None:
    """One honest sentence on what the RL stage added over SFT alone (on the same held-out prompts)."""
    sft, after = summary["accuracy"].get("after-sft"), summary["accuracy"].get(f"after-{rl}")
    if not sft or not after or sft["accuracy"] is None or after["accuracy"] is None:
        return None
    delta = after["accuracy"] - sft["accuracy"]
    sft_high, low = (sft["ci95"] or (0, 1))[1], (after["ci95"] or (0, 1))[0]
    points = f"{delta * 100:+.0f} points"
    if low > sft_high:  # the intervals do not overlap
        return f"{rl.upper()} added {points} over SFT alone, above SFT's 95% interval: a measurable gain."
    if delta > 0:
        return (f"{rl.upper()} added {points} over SFT alone, within the 95% intervals of "
                f"{sft['rows']} prompts: not a measurable gain in a run this short.")
    return (f"{rl.upper()} did not raise accuracy over SFT alone ({points}) in a run this short; "
            "its own metrics below show what it moved.")


def _report(console, out: Path, summary: dict, model: str, rl: str, recipe_path: Path) -> None:
    from rich.table import Table

    table = Table(title="Accuracy on held-out questions (greedy; a correct final number in any form)")
    table.add_column("after stage")
    table.add_column("correct", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column("answer format", justify="right")
    labels = {"before": f"— ({model} as shipped)", "after-sft": "sft", f"after-{rl}": f"sft + {rl}"}
    for stage, label in labels.items():
        row = summary["accuracy"].get(stage)
        if row is None or row["accuracy"] is None:
            continue
        low, high = row["ci95"] or (None, None)
        interval = f"{low:.0%} – {high:.0%}" if low is not None else "-"
        fmt = f"{row['format']:.0%}" if isinstance(row.get("format"), (int, float)) else "-"
        table.add_row(label, f"{row['correct']}/{row['rows']}", f"{row['accuracy']:.0%}", interval, fmt)
    console.print(table)
    console.print("accuracy: the final number the model gives, in any form ('The answer is N.' or the result "
                  "of the equation it writes), equals the true value; answer format: the `format` reward "
                  "(1 = ends with 'The answer is N.'). The shipped model completes equations ('74 * 5 =' -> "
                  "370) but never answers a question with the right number: SFT teaches that.", highlight=False)
    gain = _gain_line(summary, rl)
    if gain:
        console.print(gain, highlight=False)
    moved = summary.get("rl_metrics") or {}
    if moved:
        parts = [f"{label} {moved[key][0]:.3g} → {moved[key][1]:.3g}" for key, label in RL_METRICS[rl] if key in moved]
        console.print(f"{rl.upper()} training (first → last logged step): {', '.join(parts)}.", highlight=False)
    lens = summary["lens"]
    if lens:
        where = (f"first becomes the top prediction after block {lens['answer_top1_layer']} of {lens['layers']}"
                 if lens["answer_top1_layer"] is not None else
                 f"is not the top prediction at any of the {lens['layers']} layers (its rank per layer: "
                 f"{lens['answer_ranks']})")
        console.print(f"Logit lens on {lens['prompt']!r}: the answer {lens['answer']!r} {where}. "
                      f"Report: {out / 'logit-lens' / 'report' / 'report.html'}", highlight=False)
    final = out / rl
    console.print("Next:")
    for line in (f"lazarus generate --model {model} --adapter {shlex.quote(str(final))} --prompt 'What is 12 + 30?'",
                 f"lazarus run {shlex.quote(str(recipe_path))}     # runs nothing: every stage is done",
                 f"lazarus run {shlex.quote(str(recipe_path))} --set sft.max-steps=1000   # re-runs from sft on"):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
