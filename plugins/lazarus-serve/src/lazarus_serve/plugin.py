"""The plugin module named in pyproject.toml: registers the ``serve`` command. Importing it imports
click only; the server and mlx are imported when the command runs."""

from __future__ import annotations

import click

import lazarus


@lazarus.hookimpl
def register_commands(cli):
    @cli.command(name="serve")
    @click.option("--model", "-m", "model", required=True, metavar="PATH",
                  help="Base model: a directory in Hugging Face layout, a hub id, or an embedded name.")
    @click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
                  help="A LoRA adapter directory, served as model NAME (repeatable).")
    @click.option("--name", metavar="ID", default=None,
                  help="The base model's id in /v1/models and the `model` field [default: --model as given].")
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to bind; 0.0.0.0 makes the server reachable from other machines.")
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
                  help="Port to listen on (0 picks a free one).")
    @click.option("--max-batch", default=16, show_default=True, type=click.IntRange(min=1),
                  help="Most rows decoded together; further requests wait for a free place.")
    @click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(min=1),
                  help="Tokens generated when a request gives no max_tokens.")
    @click.option("--prefix-cache-tokens", default=8192, show_default=True, type=click.IntRange(min=0),
                  help="Keep the keys and values of finished requests (up to this many tokens) so that a "
                       "request starting with the same tokens, e.g. the next turn of a chat, skips them; 0: off.")
    @click.option("--api-key", envvar="LAZARUS_SERVE_API_KEY", default=None, metavar="KEY",
                  help="Require 'Authorization: Bearer KEY' on every /v1 request (or set LAZARUS_SERVE_API_KEY).")
    @click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
                  help="Let browser pages from ORIGIN call the API (CORS; repeatable, '*' for any).")
    @click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                  help="Convert the model's floating weights on load [default: as stored].")
    @click.option("--prefill-step-size", default=2048, show_default=True, type=click.IntRange(min=1),
                  help="Prompt tokens processed per forward pass while prefilling.")
    @click.option("--check", is_flag=True,
                  help="Load the model and adapters, generate one token with each, and exit.")
    def serve(model, adapters, name, host, port, max_batch, max_tokens, prefix_cache_tokens, api_key, allow_origins,
              dtype, prefill_step_size, check):
        """Serve a model and its adapters over an OpenAI-compatible HTTP API.

        \b
        Examples:
          lazarus serve --model ./my-model
          lazarus serve -m ./my-model --adapter math=./runs/sft --adapter chat=./runs/dpo --port 8000

        Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (stream: true for
        server-sent events). The request's `model` picks the base (its id) or an adapter (its NAME);
        requests for different adapters decode together in one batch.
        """
        from lazarus_serve.server import parse_adapters, run

        run(model=model, adapters=parse_adapters(adapters), name=name, host=host, port=port,
            max_batch=max_batch, max_tokens=max_tokens, api_key=api_key, allow_origins=allow_origins, dtype=dtype,
            prefill_step_size=prefill_step_size, check=check, prefix_cache_tokens=prefix_cache_tokens)
