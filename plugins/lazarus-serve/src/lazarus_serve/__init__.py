"""lazarus-serve: `lazarus serve`, an OpenAI-compatible server over Lazarus's batched generation, with
LoRA adapters picked per request by the ``model`` field."""

__version__ = "0.1.0"
