"""Tokenise records into training examples with a loss mask.

Conventions every trainer relies on:

- ``ids`` is an int32 array of token ids; ``loss_mask[t]`` is 1 when token ``t`` is a *target*
  (the model is trained to predict it from ``ids[:t]``), else 0. A causal-LM loss therefore uses
  ``logits[:, :-1]`` against ``ids[:, 1:]`` weighted by ``loss_mask[:, 1:]``.
- SFT: ``ids = prompt ids + completion ids (+ EOS)``; the mask is 0 on the prompt and 1 on the
  completion (1 everywhere with ``mask_prompt=False``; 1 everywhere for ``text`` records).
- ``chat`` records: the prompt is every message before the last, rendered with
  ``add_generation_prompt=True``; the completion is the rest of the full rendering (the last
  assistant turn and the template's end-of-turn tokens).
- BOS: plain-text prompts are encoded with the tokenizer's special-token rules; chat renderings
  without them (templates write their own BOS, as in HF transformers). A BOS that would appear
  twice (a prompt text that itself starts with the BOS string) is kept once.
- EOS: appended to completions unless the completion already contains an end-of-sequence id
  (chat templates that close the turn with one).
- Sequences longer than ``max_seq_length`` are cut at the end and counted; an example whose
  completion is cut away entirely is dropped and counted (it would carry no loss).

The tokenizer is anything with the core tokenizer contract (:class:`lazarus.tokenizer.Tokenizer`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from lazarus.data.records import (
    ChatRecord,
    CompletionRecord,
    Dataset,
    PreferenceRecord,
    PromptRecord,
    TextOrMessages,
    TextRecord,
)
from lazarus.errors import LazarusError


def _int32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


@attrs.frozen(eq=False)
class SFTExample:
    """One supervised sequence: ``ids`` (T,) int32, ``loss_mask`` (T,) int8 of 0/1."""

    ids: np.ndarray = attrs.field(converter=_int32)
    loss_mask: np.ndarray = attrs.field(converter=lambda m: np.asarray(m, dtype=np.int8))
    prompt_length: int = 0  #: number of leading prompt tokens (loss-free when the prompt is masked)
    record_index: int = 0  #: index of the record in its Dataset
    truncated: bool = False
    #: per-example numbers a trainer adds (dual-reward's class label); the batch stacks them (``SFTBatch.extra``)
    extra: dict = attrs.field(factory=dict)

    num_sequences = 1

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        """Targets that carry loss (the first token never does: nothing predicts it)."""
        return int(self.loss_mask[1:].sum())


@attrs.frozen(eq=False)
class PreferenceExample:
    """A chosen and a rejected sequence sharing the same first ``prompt_length`` tokens."""

    chosen_ids: np.ndarray = attrs.field(converter=_int32)
    chosen_mask: np.ndarray = attrs.field(converter=lambda m: np.asarray(m, dtype=np.int8))
    rejected_ids: np.ndarray = attrs.field(converter=_int32)
    rejected_mask: np.ndarray = attrs.field(converter=lambda m: np.asarray(m, dtype=np.int8))
    prompt_length: int = 0
    record_index: int = 0
    truncated: bool = False

    num_sequences = 2

    @property
    def length(self) -> int:
        """The longer of the two sequences (both are padded to one length in a batch)."""
        return int(max(self.chosen_ids.shape[0], self.rejected_ids.shape[0]))


@attrs.frozen(eq=False)
class PromptExample:
    """An RL prompt: its token ids and the record (whose ``extra`` feeds reward functions)."""

    prompt_ids: np.ndarray = attrs.field(converter=_int32)
    record: PromptRecord
    prompt_text: str = ""  #: the text that was encoded (after any chat template)
    record_index: int = 0

    num_sequences = 1

    @property
    def length(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def answer(self) -> Any:
        return self.record.extra.get("answer")


Example = SFTExample | PreferenceExample | PromptExample


@attrs.frozen(eq=False)
class TokenizedDataset:
    """Examples made from one Dataset plus what tokenisation had to change."""

    examples: tuple[Example, ...]
    format: str  #: ``sft``, ``preference`` or ``prompt``
    max_seq_length: int | None = None
    num_truncated: int = 0  #: examples cut to ``max_seq_length``
    num_dropped: int = 0  #: records left out (nothing to learn after truncation)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def lengths(self) -> np.ndarray:
        """Length of each example (the longer sequence for preference pairs), int64 (N,)."""
        return np.array([e.length for e in self.examples], dtype=np.int64)


# -- encoding helpers ------------------------------------------------------------------------------
def _encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    """Encode, keeping a single BOS when the text already starts with the BOS string."""
    ids = list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids and ids[0] == bos:
        start = 0
        while start + 1 < len(ids) and ids[start + 1] == bos:
            start += 1
        ids = ids[start:]  # a run of leading BOS (text's own + the tokenizer's) becomes one
    return ids


def _eos_ids(tokenizer) -> set[int]:
    return set(getattr(tokenizer, "eos_token_ids", None) or ())


def _eos_id(tokenizer) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None and _eos_ids(tokenizer):
        eos = min(_eos_ids(tokenizer))
    return eos


def pad_id_for(tokenizer) -> int:
    """The id to pad batches with: the tokenizer's pad id, else its EOS id, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = _eos_id(tokenizer)
    return 0 if pad is None else int(pad)


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool, source: str) -> str:
    if getattr(tokenizer, "chat_template", "") is None:
        raise LazarusError(f"{source}: chat messages need a chat template, but the tokenizer has none; "
                           "use prompt/completion records or a model with a chat template")
    try:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)
    except LazarusError as exc:
        raise LazarusError(f"{source}: {exc}") from None


def _chat_split(tokenizer, messages: Sequence[dict], source: str) -> tuple[str, str]:
    """(prompt text, completion text) of a conversation whose last message is the assistant's."""
    prompt = _render(tokenizer, messages[:-1], True, source)
    full = _render(tokenizer, messages, False, source)
    if not full.startswith(prompt):
        raise LazarusError(f"{source}: the chat template renders the earlier turns differently when the "
                           "last assistant turn is present, so prompt and completion cannot be split; "
                           "use prompt/completion records instead")
    return prompt, full[len(prompt):]


def _prompt_and_completion(tokenizer, prompt: TextOrMessages, completion: TextOrMessages,
                           chat_template: bool, source: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the completion that follows it.

    Plain strings are encoded as they are (prompt with special tokens, completion without), unless
    ``chat_template``: then they become a user and an assistant message. Message lists go through
    the chat template; a completion list may repeat the prompt turns (the common "chosen" layout)
    or hold only the assistant turn.
    """
    if isinstance(prompt, str) and isinstance(completion, str) and not chat_template:
        return _encode(tokenizer, prompt, True), _encode(tokenizer, completion, False)
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if isinstance(completion, str):
        conversation = [*prompt_messages, {"role": "assistant", "content": completion}]
    elif completion[0]["role"] == "assistant":
        conversation = [*prompt_messages, *completion]
    else:
        conversation = list(completion)  # the full conversation, prompt turns included
    if conversation[-1]["role"] != "assistant":
        raise LazarusError(f"{source}: the last message of the completion must be the assistant's, got "
                           f"{conversation[-1]['role']!r}")
    prompt_text, completion_text = _chat_split(tokenizer, conversation, source)
    return _encode(tokenizer, prompt_text, False), _encode(tokenizer, completion_text, False)


def _with_eos(tokenizer, ids: list[int], add_eos: bool) -> list[int]:
    eos = _eos_id(tokenizer)
    if add_eos and eos is not None and not (_eos_ids(tokenizer) & set(ids)):
        return [*ids, eos]
    return ids


# -- per-format tokenisation -----------------------------------------------------------------------
def _warn_truncation(num_truncated: int, num_dropped: int, total: int, max_seq_length: int) -> None:
    if num_truncated:
        dropped = f"; {num_dropped} had no completion left and were dropped" if num_dropped else ""
        warnings.warn(f"{num_truncated} of {total} examples were longer than max_seq_length="
                      f"{max_seq_length} and were truncated{dropped}", stacklevel=3)


def tokenize_sft(dataset: Dataset, tokenizer, *, max_seq_length: int | None = 2048,
                 mask_prompt: bool = True, add_eos: bool = True,
                 chat_template: bool = False) -> TokenizedDataset:
    """Tokenise ``completion``, ``chat`` or ``text`` records into :class:`SFTExample`.

    ``mask_prompt=False`` puts loss on the prompt too. ``chat_template=True`` wraps plain
    prompt/completion strings as a user and an assistant turn of the tokenizer's chat template.
    ``max_seq_length=None`` disables truncation. Truncations are counted in the result and
    reported with one ``UserWarning``.
    """
    examples: list[SFTExample] = []
    num_truncated = num_dropped = 0
    for index, record in enumerate(dataset.records):
        if isinstance(record, TextRecord):
            prompt_ids: list[int] = []
            completion_ids = _with_eos(tokenizer, _encode(tokenizer, record.text, True), add_eos)
        elif isinstance(record, CompletionRecord):
            prompt_ids, completion_ids = _prompt_and_completion(
                tokenizer, record.prompt, record.completion, chat_template, record.source)
            completion_ids = _with_eos(tokenizer, completion_ids, add_eos)
        elif isinstance(record, ChatRecord):
            prompt_text, completion_text = _chat_split(tokenizer, record.messages, record.source)
            prompt_ids = _encode(tokenizer, prompt_text, False)
            completion_ids = _with_eos(tokenizer, _encode(tokenizer, completion_text, False), add_eos)
        else:
            raise LazarusError(f"{record.source or 'record'}: {type(record).__name__} is not SFT data; "
                               "SFT needs prompt/completion, messages or text records")
        ids = prompt_ids + completion_ids
        mask = [0 if mask_prompt else 1] * len(prompt_ids) + [1] * len(completion_ids)
        truncated = max_seq_length is not None and len(ids) > max_seq_length
        if truncated:
            num_truncated += 1
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
            if not any(mask[1:]):
                num_dropped += 1
                continue
        examples.append(SFTExample(ids, mask, prompt_length=len(prompt_ids), record_index=index,
                                   truncated=truncated))
    _warn_truncation(num_truncated, num_dropped, len(dataset), max_seq_length or 0)
    return TokenizedDataset(tuple(examples), "sft", max_seq_length, num_truncated, num_dropped)


def tokenize_preference(dataset: Dataset, tokenizer, *, max_seq_length: int | None = 2048,
                        add_eos: bool = True, chat_template: bool = False) -> TokenizedDataset:
    """Tokenise ``preference`` records into :class:`PreferenceExample`.

    Both sequences are ``prompt ids + answer ids (+ EOS)`` with one shared prompt; their masks are
    0 on the prompt and 1 on the answer. When chosen/rejected are full conversations their
    rendered prompts must agree, else LazarusError.
    """
    examples: list[PreferenceExample] = []
    num_truncated = num_dropped = 0
    for index, record in enumerate(dataset.records):
        if not isinstance(record, PreferenceRecord):
            raise LazarusError(f"{record.source or 'record'}: {type(record).__name__} is not preference "
                               "data; preference trainers need {prompt, chosen, rejected} records")
        prompt_ids, chosen = _prompt_and_completion(tokenizer, record.prompt, record.chosen,
                                                    chat_template, record.source)
        rejected_prompt_ids, rejected = _prompt_and_completion(tokenizer, record.prompt, record.rejected,
                                                               chat_template, record.source)
        if rejected_prompt_ids != prompt_ids:
            raise LazarusError(f"{record.source}: 'chosen' and 'rejected' start from different prompts; "
                               "both must continue the same conversation")
        chosen, rejected = _with_eos(tokenizer, chosen, add_eos), _with_eos(tokenizer, rejected, add_eos)
        sequences = []
        truncated = False
        for answer in (chosen, rejected):
            ids, mask = prompt_ids + answer, [0] * len(prompt_ids) + [1] * len(answer)
            if max_seq_length is not None and len(ids) > max_seq_length:
                truncated = True
                ids, mask = ids[:max_seq_length], mask[:max_seq_length]
            sequences.append((ids, mask))
        num_truncated += truncated
        if truncated and not (any(sequences[0][1][1:]) and any(sequences[1][1][1:])):
            num_dropped += 1
            continue
        (chosen_ids, chosen_mask), (rejected_ids, rejected_mask) = sequences
        examples.append(PreferenceExample(chosen_ids, chosen_mask, rejected_ids, rejected_mask,
                                          prompt_length=len(prompt_ids), record_index=index,
                                          truncated=truncated))
    _warn_truncation(num_truncated, num_dropped, len(dataset), max_seq_length or 0)
    return TokenizedDataset(tuple(examples), "preference", max_seq_length, num_truncated, num_dropped)


def tokenize_prompts(dataset: Dataset, tokenizer, *, max_prompt_length: int | None = None,
                     chat_template: bool = False) -> TokenizedDataset:
    """Tokenise ``prompt`` records (RL) into :class:`PromptExample`.

    Message-list prompts, and string prompts when ``chat_template``, are rendered with the chat
    template and an open assistant turn. Prompts longer than ``max_prompt_length`` are dropped
    (a cut prompt asks a different question) and counted in ``num_dropped``.
    """
    examples: list[PromptExample] = []
    num_dropped = 0
    for index, record in enumerate(dataset.records):
        if not isinstance(record, PromptRecord):
            raise LazarusError(f"{record.source or 'record'}: {type(record).__name__} is not prompt data; "
                               "read the file with format='prompt'")
        if isinstance(record.prompt, str) and not chat_template:
            text = record.prompt
            ids = _encode(tokenizer, text, True)
        else:
            messages = ([{"role": "user", "content": record.prompt}] if isinstance(record.prompt, str)
                        else list(record.prompt))
            text = _render(tokenizer, messages, True, record.source)
            ids = _encode(tokenizer, text, False)
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            num_dropped += 1
            continue
        examples.append(PromptExample(ids, record, prompt_text=text, record_index=index))
    if num_dropped:
        warnings.warn(f"{num_dropped} of {len(dataset)} prompts were longer than max_prompt_length="
                      f"{max_prompt_length} and were left out", stacklevel=2)
    return TokenizedDataset(tuple(examples), "prompt", max_prompt_length, 0, num_dropped)


def tokenize(dataset: Dataset, tokenizer, *, max_seq_length: int | None = 2048, mask_prompt: bool = True,
             add_eos: bool = True, chat_template: bool = False) -> TokenizedDataset:
    """Tokenise any dataset by its format: :func:`tokenize_sft`, :func:`tokenize_preference` or
    :func:`tokenize_prompts` (where ``max_seq_length`` bounds the prompt)."""
    if dataset.format == "preference":
        return tokenize_preference(dataset, tokenizer, max_seq_length=max_seq_length, add_eos=add_eos,
                                   chat_template=chat_template)
    if dataset.format == "prompt":
        return tokenize_prompts(dataset, tokenizer, max_prompt_length=max_seq_length,
                                chat_template=chat_template)
    if dataset.format == "sft":
        return tokenize_sft(dataset, tokenizer, max_seq_length=max_seq_length, mask_prompt=mask_prompt,
                            add_eos=add_eos, chat_template=chat_template)
    raise LazarusError(f"{dataset.path}: no records to tokenise")
