"""Loading everything and running uvicorn: what ``lazarus serve`` does after parsing its options."""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
import time
from pathlib import Path

import click

from lazarus.errors import LazarusError

_NAME = re.compile(r"^[A-Za-z0-9][\w.:\-/]*$")


def parse_adapters(items: tuple[str, ...]) -> dict[str, str]:
    """``("math=./runs/sft", ...)`` -> ``{"math": "./runs/sft"}``, with one-line errors."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise LazarusError(f"--adapter {item!r} must look like NAME=DIR (e.g. --adapter math=./runs/sft)")
        if not _NAME.match(name):
            raise LazarusError(f"--adapter {item!r}: NAME may hold letters, digits and . _ - : / only")
        if name in out:
            raise LazarusError(f"--adapter {name} is given twice; give each adapter its own name")
        if not Path(path).exists():
            raise LazarusError(f"--adapter {item!r}: {path} does not exist")
        out[name] = path
    return out


def load(model: str, adapters: dict[str, str], dtype: str | None):
    """``(model, tokenizer, adapter set)`` with every adapter side by side on one base."""
    from lazarus.loader import load_model
    from lazarus_serve.adapters import load_adapters

    net, tokenizer, _ = load_model(model, dtype=dtype)
    selector = load_adapters(net, adapters)
    return net, tokenizer, selector


def smoke_test(net, tokenizer, selector, names: list[str]) -> None:
    """One greedy token from the base and from each adapter, in one batch."""
    from lazarus.batch_generator import BatchGenerator

    generator = BatchGenerator(net, tokenizer, before_forward=lambda tags: selector.select(list(tags)))
    for index in range(len(names)):
        generator.add("Hello", max_tokens=1, tag=index)
    while len(generator):
        generator.step()


def _port_free(host: str, port: int) -> int:
    """``port`` when it can be bound (for 0: a free one), else a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LazarusError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port "
                               "or --host") from None
        return sock.getsockname()[1]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(*, model: str, adapters: dict[str, str], name: str | None, host: str, port: int, max_batch: int,
        max_tokens: int, api_key: str | None, dtype: str | None, prefill_step_size: int, check: bool,
        allow_origins: tuple[str, ...] = (), prefix_cache_tokens: int = 0) -> None:
    if api_key is not None and not api_key.strip():
        raise LazarusError("--api-key is empty; give a key or leave the option out")
    name = name or model
    if name in adapters:
        raise LazarusError(f"--adapter {name} has the base model's id; give the adapter another NAME")
    if not check:
        port = _port_free(host, port)  # before the model loads: a taken port costs a second, not a load
    started = time.perf_counter()
    net, tokenizer, selector = load(model, adapters, dtype)
    names = [name, *adapters]
    smoke_test(net, tokenizer, selector, names)
    context = getattr(getattr(net, "args", None), "max_position_embeddings", None)
    summary = (f"{name} ({getattr(net, 'family', type(net).__name__)}, context {context or '?'})"
               + (f" with adapters {', '.join(adapters)}" if adapters else ""))
    if check:
        click.echo(f"ok: {summary}; loaded and generated with each in {time.perf_counter() - started:.1f} s")
        return

    import uvicorn

    from lazarus_serve.app import Server, make_app
    from lazarus_serve.engine import Engine

    engine = Engine(net, tokenizer, selector, max_batch=max_batch, prefill_step_size=prefill_step_size,
                    prefix_cache_tokens=prefix_cache_tokens)
    server = Server(name=name, adapters=list(adapters), tokenizer=tokenizer, engine=engine,
                    context=context if isinstance(context, int) else None, default_max_tokens=max_tokens,
                    api_key=api_key)
    app = make_app(server, allow_origins)
    if not _is_loopback(host) and api_key is None:
        click.echo(f"Warning: listening on {host} without --api-key: anyone who can reach this machine "
                   "can use the model", err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
    web = uvicorn.Server(config)
    engine.start()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"lazarus serve: {summary}; max batch {max_batch}", err=True)
    click.echo(f"listening on http://{shown}:{port}/v1 (Ctrl-C stops)", err=True)
    sys.stderr.flush()
    try:
        web.run()
    finally:
        engine.stop()
    if not web.started:
        raise LazarusError(f"the server could not start on {host}:{port} (see the message above)")
