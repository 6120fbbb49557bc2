"""``lazarus experts``: list, train, eval and run. Imported by ``lazarus --help``, so only click
and the standard library at the top; everything else inside the commands."""

from __future__ import annotations

import json
import math

import click

from lazarus.options import SEED, FiniteFloat
from lazarus_experts.config import train_options


def _options(pairs: tuple[str, ...], option: str) -> dict:
    """``KEY=VALUE`` pairs as a dict; values are read as JSON when they parse (numbers, true, lists)."""
    from lazarus.errors import LazarusError

    result = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LazarusError(f"{option} {item!r} must look like KEY=VALUE")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
        parsed = result[key.strip()]
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise LazarusError(f"{option} {item!r}: {value} is not a finite number")
    return result


@click.group()
def experts():
    """Small recurrent experts, the environments they act in, and LLM episodes that delegate to them."""


@experts.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json):
    """The installed expert kinds and environments (from every plugin)."""
    from lazarus.plugins import get_registry

    registry = get_registry()
    rows = []
    for kind in ("expert", "environment"):
        for name, spec in registry.all(kind).items():
            owner = registry.owner(kind, name)
            rows.append({"kind": kind, "name": name, "plugin": owner, "description": spec.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    for kind, title in (("expert", "Experts"), ("environment", "Environments")):
        click.echo(f"{title}:")
        for row in (r for r in rows if r["kind"] == kind):
            click.echo(f"  {row['name']:<{width}}  {row['description']}  [{row['plugin']}]")


@experts.command()
@train_options
def train(output, expert, env, env_options, steps, num_envs, hidden_size, num_layers, value_head, learning_rate,
          epochs, gamma, lam, clip, value_coef, entropy_coef, max_episode_steps, seed, save_interval,
          keep_checkpoints, resume, overwrite):
    """Train an expert with PPO, e.g. `lazarus experts train --expert gru --env reach --steps 60 --output run`."""
    from rich.console import Console

    from lazarus.paths import check_output_path
    from lazarus.plugins import get

    out = check_output_path(output, kind="dir", option="--output")
    get("expert", expert)
    get("environment", env)
    from lazarus_experts.training import ExpertTrainConfig, ExpertTrainer

    config = ExpertTrainConfig(
        output=str(out), expert=expert, env=env, env_options=_options(env_options, "--env-option"),
        steps=steps, num_envs=num_envs, hidden_size=hidden_size, num_layers=num_layers, value_head=value_head,
        learning_rate=learning_rate, epochs=epochs, gamma=gamma, lam=lam, clip=clip, value_coef=value_coef,
        entropy_coef=entropy_coef, max_episode_steps=max_episode_steps, seed=seed, save_interval=save_interval,
        keep_checkpoints=keep_checkpoints, resume=resume, overwrite=overwrite)
    ExpertTrainer(config, console=Console(stderr=True)).train()


@experts.command(name="eval")
@click.argument("expert_dir", type=click.Path())
@click.option("--env", "env_name", default=None, help="Environment (default: the one the expert was trained in).")
@click.option("--env-option", "env_options", multiple=True, metavar="KEY=VALUE", help="Environment keyword (repeatable).")
@click.option("--episodes", default=64, show_default=True, type=click.IntRange(1, 10**6), help="Episodes (seeds SEED, SEED+1, ...).")
@click.option("--seed", default=10_000, show_default=True, type=SEED, help="First episode seed.")
@click.option("--sample", is_flag=True, help="Sample actions instead of taking the most likely one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(expert_dir, env_name, env_options, episodes, seed, sample, as_json):
    """Mean return of a trained expert over seeds, next to a random policy's on the same seeds."""
    from lazarus.errors import LazarusError
    from lazarus_experts.environments import check_trainable, make_environment
    from lazarus_experts.experts import load_expert
    from lazarus_experts.training import expert_returns, mean_and_interval, random_returns, read_training_env

    if episodes < 1:
        raise LazarusError(f"--episodes must be >= 1, got {episodes}")
    expert = load_expert(expert_dir)
    trained_env, trained_options = read_training_env(expert_dir)
    env_name = env_name or trained_env
    if env_name is None:
        raise LazarusError(f"{expert_dir}: no environment recorded in lazarus.json; pass --env NAME")
    options = _options(env_options, "--env-option") if env_options else (trained_options if env_name == trained_env else {})
    check_trainable(make_environment(env_name, options), env_name)
    mine = expert_returns(expert, env_name, episodes, seed, options, deterministic=not sample)
    rand = random_returns(env_name, episodes, seed, options)
    (em, eh), (rm, rh) = mean_and_interval(mine), mean_and_interval(rand)
    result = {"env": env_name, "episodes": episodes, "seed": seed, "expert": {"mean": em, "ci95": eh},
              "random": {"mean": rm, "ci95": rh}, "improvement": em - rm}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{env_name}, {episodes} episodes from seed {seed}:")
    click.echo(f"  expert  {em:9.3f} ± {eh:.3f}")
    click.echo(f"  random  {rm:9.3f} ± {rh:.3f}")
    click.echo(f"  expert - random: {em - rm:+.3f}")


@experts.command()
@click.option("--env", "env_name", default="arith-delegate", show_default=True, help="A text environment.")
@click.option("--model", required=True, help="The LLM: a local directory in Hugging Face layout or a hub id.")
@click.option("--adapter", default=None, help="An adapter directory for the model.")
@click.option("--experts", "experts_dir", default=None,
              help="Expert instances the LLM may delegate to: a registry directory (or one expert directory).")
@click.option("--env-option", "env_options", multiple=True, metavar="KEY=VALUE", help="Environment keyword (repeatable).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Episode seed (which question).")
@click.option("--max-steps", default=None, type=click.IntRange(1, 10**4), help="LLM turns before the episode ends (default: the environment's).")
@click.option("--max-tokens", default=96, show_default=True, type=click.IntRange(1, 10**6), help="Tokens per LLM turn.")
@click.option("--temperature", default=0.0, show_default=True, type=FiniteFloat(0))
@click.option("--mcp", "mcp_commands", multiple=True, metavar="COMMAND",
              help="Also offer the tools of an MCP server started as COMMAND over stdio (needs `pip install mcp`).")
@click.option("--json", "as_json", is_flag=True, help="Print the episode as JSON.")
def run(env_name, model, adapter, experts_dir, env_options, seed, max_steps, max_tokens, temperature, mcp_commands,
        as_json):
    """Run one LLM episode with the orchestrator and print the transcript, e.g.
    `lazarus experts run --env arith-delegate --model M`."""
    from lazarus.errors import LazarusError
    from lazarus_experts.environments import make_environment
    from lazarus_experts.orchestrator import llm_from_model, run_episode

    options = _options(env_options, "--env-option")
    if experts_dir is not None:
        options["experts"] = experts_dir
    if max_steps is not None:
        if max_steps < 1:
            raise LazarusError(f"--max-steps must be >= 1, got {max_steps}")
        options["max_steps"] = max_steps
    env = make_environment(env_name, options)
    if getattr(getattr(env, "observation_space", None), "kind", None) != "text":
        raise LazarusError(f"environment {env_name!r} is not a text environment; train an expert in it with "
                           "`lazarus experts train --env NAME` instead")
    if mcp_commands:
        from lazarus_experts.orchestrator import mcp_tools

        if not hasattr(env, "orchestrator"):
            raise LazarusError(f"--mcp: environment {env_name!r} has no orchestrator to add tools to")
        for command in mcp_commands:
            for name, tool in mcp_tools(command).items():
                env.orchestrator.add_tool(name, tool)
    import lazarus

    llm_model, tokenizer, _ = lazarus.load_model(model, adapter_path=adapter)
    episode = run_episode(env, llm_from_model(llm_model, tokenizer, max_tokens=max_tokens, temperature=temperature,
                                              seed=seed), seed=seed)
    if as_json:
        click.echo(json.dumps({"env": env_name, "seed": seed, "reward": episode.reward, "steps": episode.steps,
                               "answer": episode.answer, "expected": episode.info.get("expected"),
                               "transcript": episode.transcript}, indent=2))
        return
    for entry in episode.transcript:
        label = {"task": "TASK", "llm": "LLM", "observation": "OBS"}.get(entry["role"], entry["role"].upper())
        click.echo(f"[{label}] {entry['text']}")
    click.echo(f"reward {episode.reward:g} after {episode.steps} turn(s); answer {episode.answer!r}, "
               f"expected {episode.info.get('expected')!r}")
