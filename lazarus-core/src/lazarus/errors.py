"""Errors meant for people. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class LazarusError(Exception):
    """A problem with the user's input or setup: the message says what, where and what to do.

    A library error about one setting names its config field (``num_layers 20 is more than ...``)
    and passes ``field="num_layers"``; the CLI prints :meth:`cli_message`, where that leading field
    reads as its command-line flag (``--num-layers 20 is more than ...``). ``flag`` overrides the
    flag when it is not ``--`` plus the field in kebab-case.
    """

    exit_code = 2

    def __init__(self, *args: object, field: str | None = None, flag: str | None = None) -> None:
        super().__init__(*args)
        self.field = field
        self.flag = flag

    def cli_message(self) -> str:
        """The message as the CLI shows it: a leading config field named as its flag."""
        text = str(self)
        if self.field and text.startswith(self.field):
            return (self.flag or option_flag(self.field)) + text[len(self.field):]
        return text


def option_flag(field: str) -> str:
    """The command-line flag of a config field: ``num_layers`` -> ``--num-layers``."""
    return "--" + field.replace("_", "-")


class PluginError(LazarusError):
    """A plugin failed to import or register (raised only with LAZARUS_STRICT_PLUGINS=1)."""


class UnknownNameError(LazarusError, KeyError):
    """No registered thing of that kind has that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0] if self.args else ""


class TrainingDiverged(LazarusError):
    """A training run stopped because its loss or gradients became non-finite or its eval loss rose
    far above where it started. Nothing was saved for the bad step; the last good checkpoint stays.

    ``step`` is the optimizer step at which it was seen, ``checkpoint`` the last good checkpoint
    (``None`` when none was written)."""

    def __init__(self, message: str, *, step: int, checkpoint=None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class LazarusWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI prints one ``Warning:`` line)."""


class AdapterBaseWarning(LazarusWarning):
    """An adapter is applied to another base model than the one its ``lazarus.json`` names."""
