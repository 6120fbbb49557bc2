"""What the parts of the trainer base share (:class:`TrainerParts`): the state
:meth:`Trainer.__init__ <lazarus.training.trainer.Trainer>` sets and the methods one part calls on
another. The parts (adapter set-up, data, weights I/O, the guard, the display) are mixins of
:class:`~lazarus.training.trainer.Trainer`; this class declares what they read of each other, so a
type checker can follow them. It holds no values and no behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from lazarus.adapters import AdapterConfig
    from lazarus.data.batching import BatchIterator
    from lazarus.errors import TrainingDiverged
    from lazarus.paths import OutputLock
    from lazarus.training.callbacks import Callbacks
    from lazarus.training.config import TrainingConfig
    from lazarus.training.distributed import World
    from lazarus.training.run_state import TrainResult


class TrainerParts:
    """Declarations only (see the module docstring); :class:`Trainer` sets every one of them."""

    name: ClassVar[str]
    data_format: ClassVar[str]
    pad_to_multiple: ClassVar[int]
    headline_metrics: ClassVar[tuple[str, ...]]

    config: TrainingConfig
    world: World
    console: Console | None  #: None on ranks other than 0
    show_progress: bool
    output: Path
    # the model and what is trained: None until load() / apply_adapter() / train() set them up
    model: Any
    tokenizer: Any
    model_config: dict
    adapter_config: AdapterConfig | None
    num_trainable: int
    optimizer: Any
    # the data: None until load_data() (valid_examples stays None without a validation split)
    train_examples: Any
    valid_examples: Any
    train_batches: Any  # a BatchIterator
    pad_id: int
    # the run
    callbacks: Callbacks
    eval_metrics: dict[str, float]
    eval_batches_done: int | None
    window_seconds: float | None
    _result: TrainResult | None
    _lock: OutputLock | None
    _bar: Progress | None

    if TYPE_CHECKING:  # defined by the other parts

        def log(self, message: str) -> None: ...

        def total_steps(self) -> int: ...

        def _iterator(self, examples: Any, *, shuffle: bool) -> BatchIterator: ...

        def _diverged(self, step: int, what: str, result: TrainResult | None = None) -> TrainingDiverged: ...

        def _guard_weights(self, step: int) -> None: ...

        @property
        def full_fine_tune(self) -> bool: ...
