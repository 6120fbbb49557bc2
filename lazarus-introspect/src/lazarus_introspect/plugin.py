"""Registers the introspection probes of this distribution and the ``lazarus introspect`` group.

Each probe is a :class:`~lazarus.specs.ProbeSpec` whose ``entry`` names an operation
(:mod:`lazarus.operations`) or a click command; the
``introspect`` group lists every registered probe (ours and other plugins') and imports a probe's
module only when that probe is run, so ``lazarus --help`` never imports mlx.
"""

from __future__ import annotations

import click

import lazarus
from lazarus.specs import ProbeSpec

#: name -> (module:command, one-line description)
PROBES: dict[str, tuple[str, str]] = {
    "logit-lens": ("lazarus_introspect.logit_lens:logit_lens_probe",
                   "Read every layer's residual stream through the final norm and the unembedding."),
    "tuned-lens": ("lazarus_introspect.tuned_lens:tuned_lens_probe",
                   "Train per-layer affine translators (KL to the final layer) and read through them."),
    "probe": ("lazarus_introspect.linear_probe:linear_probe",
              "Linear (logistic) probes per layer on labelled prompts; saves the best direction."),
    "patch": ("lazarus_introspect.patching:activation_patching",
              "Activation patching clean -> corrupted over layers x positions (resid, attn, mlp)."),
    "ablate": ("lazarus_introspect.ablation:ablate_probe",
               "Zero / mean ablation of attention heads, whole attention or MLP per layer."),
    "steer": ("lazarus_introspect.steering:steer_probe",
              "Add a direction to the residual stream during generation; steered vs plain text."),
    "attention": ("lazarus_introspect.attention:attention_probe",
                  "Attention patterns per layer and head: entropy, top attended tokens, heatmaps."),
    "neurons": ("lazarus_introspect.neurons:neurons_probe",
                "Top-activating MLP neurons over prompts and the tokens each one promotes."),
    "embeddings": ("lazarus_introspect.embeddings:embeddings_probe",
                   "Per-layer prompt representations: cosine similarity, PCA, clustering by label."),
    "dla": ("lazarus_introspect.dla:dla_probe",
            "Direct logit attribution: a token's logit split into embed, heads, attention and MLP parts."),
    "attribute": ("lazarus_introspect.attribution:attribution_probe",
                  "Attribution patching: grad x (clean - corrupted) per layer x position; --compare patches."),
}


@lazarus.hookimpl
def register_probes(register):
    for name, (entry, description) in PROBES.items():
        register(ProbeSpec(name=name, entry=entry, description=description))


class IntrospectGroup(click.Group):
    """``lazarus introspect NAME``: NAME is any registered probe; its command is imported on use."""

    def list_commands(self, ctx):
        from lazarus.plugins import get_registry

        return sorted(set(super().list_commands(ctx)) | set(get_registry().names("probe")))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        from lazarus.plugins import get_registry

        registry = get_registry()
        if name not in registry.names("probe"):
            return None
        try:
            command = registry.get("probe", name).load()
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(
                f"probe {name!r} from plugin {registry.owner('probe', name)!r} could not be loaded: "
                f"{type(exc).__name__}: {exc}") from None
        from lazarus.operations import Operation

        if isinstance(command, Operation):  # a probe written as an operation: its command is derived
            return command.command(name)
        if not isinstance(command, click.Command):
            raise click.ClickException(
                f"probe {name!r} ({registry.owner('probe', name)}) names {type(command).__name__}, "
                "not an operation or a click command; its ProbeSpec.entry must point at one")
        return command

    def format_commands(self, ctx, formatter):
        # Listing uses the spec descriptions so `--help` imports no probe module.
        from lazarus.plugins import get_registry

        specs = get_registry().all("probe")
        rows = [(name, spec.description) for name, spec in specs.items()]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())
                 if name not in specs]
        if rows:
            with formatter.section("Probes"):
                formatter.write_dl(rows)


#: ``lazarus sae NAME`` -> module:command (imported only when that command runs)
SAE_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lazarus_introspect.sae_train:train_command",
              "Train a sparse autoencoder (topk or ReLU+L1) on a model's activations at a hook."),
    "features": ("lazarus_introspect.sae_commands:features_command",
                 "Top SAE features per token of a prompt, and their top contexts in a dataset."),
    "steer": ("lazarus_introspect.sae_commands:steer_command",
              "Generate with a feature's decoder direction added at the SAE's hook."),
    "ablate": ("lazarus_introspect.sae_commands:ablate_command",
               "Generate with a feature removed at the SAE's hook."),
}


class SAEGroup(click.Group):
    """``lazarus sae NAME``: the commands of :data:`SAE_COMMANDS`, each imported on use."""

    def list_commands(self, ctx):
        return sorted(SAE_COMMANDS)

    def get_command(self, ctx, name):
        if name not in SAE_COMMANDS:
            return None
        import importlib

        module, attribute = SAE_COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in sorted(SAE_COMMANDS.items())])


@lazarus.hookimpl
def register_commands(cli):
    @cli.group(name="sae", cls=SAEGroup)
    def sae():
        """Sparse autoencoders in SAELens's format: train, read features, steer and ablate them.

        SAE folders hold cfg.json + sae_weights.safetensors (SAELens layout), so SAEs move
        between SAELens and Lazarus.
        """

    @cli.group(name="introspect", cls=IntrospectGroup)
    def introspect():
        """Look inside a model: `lazarus introspect NAME --model M [--adapter DIR] ...`.

        Every probe prints a table, and writes the same numbers with --json FILE and a
        self-contained HTML page with PNG heatmaps with --report DIR.
        """
