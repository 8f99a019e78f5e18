"""The synthetic tasks of the paper's Fig. 4 and Fig. 5 settings, and their metric.

Formal languages (regular tasks of Delétang et al., 2023, as the xLSTM paper uses them): every generator returns
`(input_ids, labels)`, both (N, L) int64. `labels[b, t]` is the answer for the prefix `input_ids[b, : t + 1]` (a
class in [0, num_classes)), or -100 where that prefix has no answer (an expression ending in an operator). The
answer for a whole sequence is the label at its last labelled position (`final_positions`); the paper supervises
only that one, the experiments here can supervise every labelled position (the running answer).

MQAR (multi-query associative recall, Arora et al., 2023, the paper's Fig. 5): key-value pairs, then each key
queried once; the label at a query's position is the value that followed the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

IGNORE = -100  # label of a position that is not scored (the loss functions' ignore_index)


@dataclass(frozen=True)
class FormalTask:
    """A formal-language task: `generate(num, length, generator)` -> (input_ids, labels), both (num, length)."""

    name: str
    num_symbols: int  # input alphabet size: input ids are in [0, num_symbols)
    num_classes: int  # answers are in [0, num_classes); chance accuracy is 1 / num_classes
    generate: Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    description: str


def parity(num: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits; the label at t is the parity of the number of ones in x[: t + 1]. Returns two (num, length) int64."""
    bits = torch.randint(0, 2, (num, length), generator=generator)
    return bits, bits.cumsum(dim=1) % 2


CYCLE = 5  # positions on the cycle (Delétang et al.)


def cycle_navigation(num: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Moves on a cycle of 5 positions starting at 0: token 0 stays, 1 steps forward, 2 steps back; the label at t
    is the position after the first t + 1 moves. Returns two (num, length) int64."""
    moves = torch.randint(0, 3, (num, length), generator=generator)
    steps = torch.tensor([0, 1, -1])[moves]
    return moves, steps.cumsum(dim=1) % CYCLE


MODULUS = 5
PLUS, MINUS, TIMES = MODULUS, MODULUS + 1, MODULUS + 2  # operator tokens follow the digit tokens


def modular_arithmetic(num: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Expressions `d op d op d ...` without brackets: digits 0-4 (tokens 0-4) at even positions, operators
    + - * (tokens 5, 6, 7) at odd ones, evaluated with the usual precedence (* before + and -) modulo 5, as in
    Delétang et al. The label at a digit is the value of the expression up to it; operators get -100 (an
    expression cannot end there), so with an even `length` the whole sequence's answer is at length - 2.
    Returns two (num, length) int64."""
    ids = torch.randint(0, MODULUS, (num, length), generator=generator)
    ids[:, 1::2] = torch.randint(PLUS, TIMES + 1, (num, length // 2), generator=generator)
    labels = torch.full((num, length), IGNORE, dtype=torch.long)
    # Left to right with precedence: a finished sum of terms, the sign of the open term, the open term (a product).
    total = torch.zeros(num, dtype=torch.long)
    sign = torch.ones(num, dtype=torch.long)
    term = ids[:, 0].clone()
    labels[:, 0] = term
    for t in range(2, length, 2):
        op, digit = ids[:, t - 1], ids[:, t]
        times = op == TIMES
        total = torch.where(times, total, total + sign * term)
        sign = torch.where(times, sign, torch.where(op == PLUS, 1, -1))
        term = torch.where(times, term * digit, digit) % MODULUS
        labels[:, t] = (total + sign * term) % MODULUS
    return ids, labels


FORMAL_TASKS: dict[str, FormalTask] = {
    task.name: task for task in (
        FormalTask("parity", 2, 2, parity, "parity of the number of ones"),
        FormalTask("cycle_navigation", 3, CYCLE, cycle_navigation,
                   "position on a 5-cycle after moves stay/+1/-1"),
        FormalTask("modular_arithmetic", MODULUS + 3, MODULUS, modular_arithmetic,
                   "value mod 5 of an expression over 0-4 with + - * (precedence, no brackets)"),
    )
}


def final_positions(labels: torch.Tensor) -> torch.Tensor:
    """Index of the last labelled position of each row: labels (N, L) -> (N,) int64. Every row needs one."""
    labelled = labels != IGNORE
    if not labelled.any(dim=1).all():
        raise ValueError("Every row needs at least one labelled position.")
    steps = torch.arange(labels.shape[1], device=labels.device)
    return torch.where(labelled, steps, -1).amax(dim=1)


def final_only(labels: torch.Tensor) -> torch.Tensor:
    """labels (N, L) with every position but each row's last labelled one set to -100 (the paper's supervision)."""
    keep = torch.full_like(labels, IGNORE)
    rows = torch.arange(labels.shape[0], device=labels.device)
    last = final_positions(labels)
    keep[rows, last] = labels[rows, last]
    return keep


def scaled_accuracy(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """The paper's metric: accuracy rescaled so that chance (1 / num_classes) is 0 and perfect is 1,
    (acc - 1/C) / (1 - 1/C). Worse than chance is negative. predictions, targets: same shape, class ids."""
    if predictions.shape != targets.shape or targets.numel() == 0:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must have the "
                         "same, non-empty shape.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    accuracy = (predictions == targets).double().mean().item()
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


# ---------------------------------------------------------------------------------------------------- MQAR
FILLER = 0  # the token in the gaps between queries


def mqar_vocabulary(vocab_size: int) -> tuple[range, range]:
    """(key ids, value ids) of an MQAR vocabulary: token 0 is the filler, the rest is split into keys (first half)
    and values (second half)."""
    num_keys = (vocab_size - 1) // 2
    return range(1, 1 + num_keys), range(1 + num_keys, vocab_size)


def mqar(num: int, seq_len: int, num_pairs: int, vocab_size: int,
         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall sequences. Returns (input_ids, labels), both (num, seq_len) int64.

    Positions 0 .. 2P-1 hold P pairs `key value` with P distinct keys (no key is reused within a sequence) and
    values drawn with replacement. The rest of the sequence holds each key once more, in a random order, at random
    even offsets, each followed by its value (as a language model would read it); the gaps hold the filler token.
    The label at a query key is its value; every other position is -100. So a model scores by predicting, at each
    query, the value that followed that key in the context.
    """
    keys, values = mqar_vocabulary(vocab_size)
    if num_pairs < 1 or num_pairs > len(keys):
        raise ValueError(f"MQAR: num_pairs must be in [1, {len(keys)}] (the keys of a vocabulary of {vocab_size}), "
                         f"got {num_pairs}.")
    query_slots = (seq_len - 2 * num_pairs) // 2
    if query_slots < num_pairs:
        raise ValueError(f"MQAR: a context of {seq_len} tokens cannot hold {num_pairs} pairs and their queries; it "
                         f"needs at least {4 * num_pairs}.")
    rows = torch.arange(num).unsqueeze(1)
    key_ids = torch.rand(num, len(keys), generator=generator).argsort(dim=1)[:, :num_pairs] + keys.start
    value_ids = torch.randint(values.start, values.stop, (num, num_pairs), generator=generator)
    ids = torch.full((num, seq_len), FILLER, dtype=torch.long)
    ids[:, 0: 2 * num_pairs: 2], ids[:, 1: 2 * num_pairs: 2] = key_ids, value_ids
    # Each query takes one of the pair slots after the context, in a random order of the keys.
    order = torch.rand(num, num_pairs, generator=generator).argsort(dim=1)
    slots = torch.rand(num, query_slots, generator=generator).argsort(dim=1)[:, :num_pairs]
    positions = 2 * num_pairs + 2 * slots
    ids[rows, positions], ids[rows, positions + 1] = key_ids[rows, order], value_ids[rows, order]
    labels = torch.full_like(ids, IGNORE)
    labels[rows, positions] = value_ids[rows, order]
    return ids, labels
