"""``lazarus generate``: stream text from a model to the terminal."""

from __future__ import annotations

import sys

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.options import SEED, TEXT, FiniteFloat
from lazarus.training.config import setting

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


@attrs.define(kw_only=True)
class GenerateOptions:
    """The options of ``lazarus generate`` (recipe ``generate`` stage keys)."""

    model: str | None = setting(None, "Model directory in Hugging Face layout (config.json, *.safetensors, "
                                      "tokenizer.json).", required=True, flags=("-m",), metavar="PATH")
    prompt: str | None = setting(None, "The prompt; '-' reads it from standard input.", required=True,
                                 flags=("-p",), metavar="TEXT", type=TEXT)
    chat: bool = setting(False, "Wrap the prompt as a user message in the model's chat template.")
    system: str | None = setting(None, "System message for --chat (implies --chat).", metavar="TEXT", type=TEXT)
    raw: bool = setting(False, "Feed the prompt exactly: no chat template and no BOS/special tokens added.")
    max_tokens: int | None = setting(None, MAX_TOKENS_HELP, flags=("-n",), type=click.IntRange(min=1), minimum=1)
    temperature: float = setting(0.0, "Sampling temperature; 0 is greedy (always the most likely token).",
                                 flags=("-t", "--temp"), type=FiniteFloat(0), minimum=0.0)
    top_p: float = setting(1.0, "Nucleus sampling: keep the most likely tokens up to this probability mass "
                                "(1 = off).", type=FiniteFloat(0, 1), minimum=0.0, maximum=1.0)
    top_k: int = setting(0, "Keep only the K most likely tokens (0 = off).", type=click.IntRange(min=0), minimum=0)
    min_p: float = setting(0.0, "Drop tokens less likely than MIN_P times the best token (0 = off).",
                           type=FiniteFloat(0, 1), minimum=0.0, maximum=1.0)
    repetition_penalty: float = setting(1.0, "Penalise recently seen tokens (> 1 discourages repeats; 1 = off).",
                                        type=FiniteFloat(0, min_open=True))
    repetition_context_size: int = setting(20, "How many recent tokens the repetition penalty looks at.",
                                           type=click.IntRange(min=1), minimum=1)
    stop: tuple[str, ...] = setting((), "Stop when the output contains TEXT (not printed). Repeat for several.",
                                    metavar="TEXT", type=TEXT)
    seed: int | None = setting(None, "Random seed for reproducible sampling.", type=SEED, minimum=0)
    adapter: str | None = setting(None, "Adapter directory (mlx-lm layout) to apply on top of the model.",
                                  metavar="DIR")
    prefill_step_size: int = setting(2048, "Prompt tokens processed per forward pass while prefilling.",
                                     type=click.IntRange(min=1), minimum=1)
    verbose: bool = setting(True, "Print speed and memory figures to stderr at the end.", off="--quiet")
    stream: bool = setting(False, "Print the text as it is generated (the command does).", cli=False)


@attrs.frozen(kw_only=True)
class GenerateResult:
    """The generated text and how it went."""

    text: str
    finish_reason: str | None  #: stop, length, interrupted (Ctrl-C), or None when nothing was generated
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    peak_memory_gb: float


def _check(options: GenerateOptions) -> GenerateOptions:
    """The prompt (``-``: standard input, which must be UTF-8) and --chat/--raw."""
    prompt, chat = options.prompt, options.chat
    if prompt == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LazarusError(f"--prompt -: byte 0x{data[exc.start]:02x} at byte {exc.start + 1} of standard "
                               "input is not UTF-8; pass UTF-8 text") from None
    if options.system is not None:
        chat = True
    if chat and options.raw:
        raise LazarusError("--chat/--system and --raw exclude each other: pick one")
    return attrs.evolve(options, prompt=prompt, chat=chat)


def _show(result: GenerateResult, options: GenerateOptions) -> None:
    if not options.stream:
        click.echo(result.text, nl=False)
    click.echo()
    if options.verbose and result.finish_reason is not None:
        click.echo(f"prompt: {result.prompt_tokens} tokens, {result.prompt_tps:.1f} tokens/s | "
                   f"generation: {result.generation_tokens} tokens, {result.generation_tps:.1f} tokens/s | "
                   f"peak memory: {result.peak_memory_gb:.3f} GB | stopped: {result.finish_reason}", err=True)
    if result.finish_reason == "interrupted":
        sys.exit(130)


@operation(options=GenerateOptions, metric="generation_tokens", name="generate", check=_check, show=_show,
           cli_values={"stream": True})
def generate_text(model, tokenizer, options: GenerateOptions) -> GenerateResult:
    """Generate text from a prompt, streaming it to the terminal.

    \b
    Examples:
      lazarus generate --model ./my-model --prompt "Once upon a time"
      lazarus generate -m ./my-model --chat --system "Be brief." -p "What is 12 + 7?"
      echo "2 + 2 =" | lazarus generate -m ./my-model --raw -p - --max-tokens 5

    Prompt/generation speed (tokens per second) and peak memory go to stderr.
    """
    import warnings

    from lazarus.generation import ContextLengthWarning, SamplingConfig, context_warning, stream_generate

    chat = options.chat or options.system is not None
    if chat:
        messages = ([{"role": "system", "content": options.system}] if options.system else []) + [
            {"role": "user", "content": options.prompt}]
        prompt_ids = tokenizer.encode_chat(messages, add_generation_prompt=True)
    else:
        prompt_ids = tokenizer.encode(options.prompt, add_special_tokens=not options.raw)
    sampling = SamplingConfig(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                              min_p=options.min_p, repetition_penalty=options.repetition_penalty,
                              repetition_context_size=options.repetition_context_size, seed=options.seed)
    max_tokens = options.max_tokens
    if max_tokens is None:
        max_tokens = fitting_max_tokens(model, len(prompt_ids))
    past_context = context_warning(model, len(prompt_ids), max_tokens, option="--max-tokens")
    if past_context:
        click.echo(f"Warning: {past_context}", err=True)
    chunk = None
    finish = None
    parts: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContextLengthWarning)  # said once, above
            for chunk in stream_generate(model, tokenizer, prompt_ids, max_tokens=max_tokens, sampling=sampling,
                                         stop=options.stop, prefill_step_size=options.prefill_step_size):
                if chunk.text:
                    parts.append(chunk.text)
                    if options.stream:
                        click.echo(chunk.text, nl=False)  # echo flushes: text appears as it is generated
                finish = chunk.finish_reason
    except KeyboardInterrupt:  # Ctrl-C ends generation early; still report what was done
        finish = "interrupted"
    stats = chunk.stats if chunk is not None else None
    return GenerateResult(text="".join(parts), finish_reason=finish if chunk is not None or finish else None,
                          prompt_tokens=stats.prompt_tokens if stats else len(prompt_ids),
                          generation_tokens=stats.generation_tokens if stats else 0,
                          prompt_tps=stats.prompt_tps if stats else 0.0,
                          generation_tps=stats.generation_tps if stats else 0.0,
                          peak_memory_gb=stats.peak_memory_gb if stats else 0.0)


generate = generate_text.command("generate")
