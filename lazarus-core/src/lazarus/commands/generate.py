"""``lazarus generate``: stream text from a model to the terminal."""

from __future__ import annotations

import sys

import click

from lazarus.errors import LazarusError
from lazarus.options import SEED, TEXT, FiniteFloat

#: most tokens generated when --max-tokens is not given (fewer when the model's context is shorter)
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_HELP = (f"Most tokens to generate [default: {DEFAULT_MAX_TOKENS}, or what fits the model's context "
                   "after the prompt].")


def fitting_max_tokens(model, prompt_tokens: int, wanted: int = DEFAULT_MAX_TOKENS) -> int:
    """``wanted``, or fewer so that ``prompt_tokens`` plus the completion fit the model's context
    (``max_position_embeddings``); at least 1, and ``wanted`` when the model states no context."""
    limit = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return wanted
    return max(1, min(wanted, limit - prompt_tokens))


@click.command()
@click.option("--model", "-m", "model_path", required=True, metavar="PATH",
              help="Model directory in Hugging Face layout (config.json, *.safetensors, tokenizer.json).")
@click.option("--prompt", "-p", required=True, metavar="TEXT", type=TEXT,
              help="The prompt; '-' reads it from standard input.")
@click.option("--chat", is_flag=True,
              help="Wrap the prompt as a user message in the model's chat template.")
@click.option("--system", metavar="TEXT", type=TEXT, help="System message for --chat (implies --chat).")
@click.option("--raw", is_flag=True,
              help="Feed the prompt exactly: no chat template and no BOS/special tokens added.")
@click.option("--max-tokens", "-n", default=None, type=click.IntRange(min=1), help=MAX_TOKENS_HELP)
@click.option("--temperature", "-t", "--temp", default=0.0, show_default=True, type=FiniteFloat(0),
              help="Sampling temperature; 0 is greedy (always the most likely token).")
@click.option("--top-p", default=1.0, show_default=True, type=FiniteFloat(0, 1),
              help="Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off).")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0),
              help="Keep only the K most likely tokens (0 = off).")
@click.option("--min-p", default=0.0, show_default=True, type=FiniteFloat(0, 1),
              help="Drop tokens less likely than MIN_P times the best token (0 = off).")
@click.option("--repetition-penalty", default=1.0, show_default=True, type=FiniteFloat(0, min_open=True),
              help="Penalise recently seen tokens (> 1 discourages repeats; 1 = off).")
@click.option("--repetition-context-size", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many recent tokens the repetition penalty looks at.")
@click.option("--stop", multiple=True, metavar="TEXT", type=TEXT,
              help="Stop when the output contains TEXT (not printed). Repeat for several.")
@click.option("--seed", type=SEED, default=None, help="Random seed for reproducible sampling.")
@click.option("--adapter", "adapter_path", metavar="DIR", default=None,
              help="Adapter directory (mlx-lm layout) to apply on top of the model.")
@click.option("--prefill-step-size", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Prompt tokens processed per forward pass while prefilling.")
@click.option("--verbose/--quiet", default=True, show_default=True,
              help="Print speed and memory figures to stderr at the end.")
def generate(model_path, prompt, chat, system, raw, max_tokens, temperature, top_p, top_k, min_p,
             repetition_penalty, repetition_context_size, stop, seed, adapter_path, prefill_step_size,
             verbose):
    """Generate text from a prompt, streaming it to the terminal.

    \b
    Examples:
      lazarus generate --model ./my-model --prompt "Once upon a time"
      lazarus generate -m ./my-model --chat --system "Be brief." -p "What is 12 + 7?"
      echo "2 + 2 =" | lazarus generate -m ./my-model --raw -p - --max-tokens 5

    Prompt/generation speed (tokens per second) and peak memory go to stderr.
    """
    if prompt == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LazarusError(f"--prompt -: byte 0x{data[exc.start]:02x} at byte {exc.start + 1} of standard "
                               "input is not UTF-8; pass UTF-8 text") from None
    if system is not None:
        chat = True
    if chat and raw:
        raise LazarusError("--chat/--system and --raw exclude each other: pick one")

    import warnings

    from lazarus.generate import ContextLengthWarning, SamplingConfig, context_warning, stream_generate
    from lazarus.loader import load_model

    model, tokenizer, _ = load_model(model_path, adapter_path=adapter_path)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        prompt_ids = tokenizer.encode_chat(messages, add_generation_prompt=True)
    else:
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=not raw)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty,
                              repetition_context_size=repetition_context_size, seed=seed)
    if max_tokens is None:
        max_tokens = fitting_max_tokens(model, len(prompt_ids))
    past_context = context_warning(model, len(prompt_ids), max_tokens, option="--max-tokens")
    if past_context:
        click.echo(f"Warning: {past_context}", err=True)
    chunk = None
    finish = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContextLengthWarning)  # said once, above
            for chunk in stream_generate(model, tokenizer, prompt_ids, max_tokens=max_tokens, sampling=sampling,
                                         stop=stop, prefill_step_size=prefill_step_size):
                if chunk.text:
                    click.echo(chunk.text, nl=False)  # echo flushes, so text appears as it is generated
                finish = chunk.finish_reason
    except KeyboardInterrupt:  # Ctrl-C ends generation early; still report what was done
        finish = "interrupted"
    click.echo()
    if verbose and chunk is not None:
        s = chunk.stats
        click.echo(f"prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.1f} tokens/s | "
                   f"generation: {s.generation_tokens} tokens, {s.generation_tps:.1f} tokens/s | "
                   f"peak memory: {s.peak_memory_gb:.3f} GB | stopped: {finish}", err=True)
    if finish == "interrupted":
        sys.exit(130)
