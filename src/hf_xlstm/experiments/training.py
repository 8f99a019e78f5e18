"""One small training loop and the class readout shared by the paper experiments.

The models are any transformers causal LM (hf_xlstm's, Llama, Mamba); a task reads its answers from a slice of the
output vocabulary: `class_logits(model, input_ids, offset, num_classes)` (B, T, num_classes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .tasks import IGNORE

Progress = Callable[[int], None]  # called with a number of optimizer steps just done


def class_logits(model: nn.Module, input_ids: torch.Tensor, offset: int, num_classes: int) -> torch.Tensor:
    """Logits of the answer tokens offset .. offset + num_classes - 1: input_ids (B, T) -> (B, T, num_classes)."""
    logits = model(input_ids=input_ids, use_cache=False).logits
    return logits[..., offset: offset + num_classes].float()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions: logits (B, T, C), labels (B, T) with -100 elsewhere."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def optimizer_and_schedule(model: nn.Module, lr: float, steps: int, weight_decay: float = 0.1,
                           warmup_fraction: float = 0.1):
    """AdamW (betas 0.9/0.95 as in the paper) with weight decay on matrices only (not on biases, norms, gate
    biases), linear warm-up over `warmup_fraction` of the steps, then cosine decay to 10% of `lr`."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    warmup = max(1, round(warmup_fraction * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(model: nn.Module, next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
          loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], *, steps: int, lr: float,
          weight_decay: float = 0.1, warmup_fraction: float = 0.1, grad_clip: float = 1.0,
          progress: Progress | None = None, report_every: int = 10) -> list[float]:
    """`steps` AdamW steps on `next_batch(step)` -> (input_ids, labels). Returns the training loss of every step.
    `progress` is told every `report_every` steps (and at the end) how many steps were done since it last was."""
    optimizer, schedule = optimizer_and_schedule(model, lr, steps, weight_decay, warmup_fraction)
    model.train()
    losses, unreported = [], 0
    for step in range(steps):
        input_ids, labels = next_batch(step)
        loss = loss_fn(model, input_ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        unreported += 1
        if progress is not None and (unreported == report_every or step == steps - 1):
            progress(unreported)
            unreported = 0
    model.eval()
    return losses


def final_loss(losses: list[float]) -> float | None:
    """Mean training loss over the last tenth of the steps; None when it is not finite (a run that diverged, which
    the JSON records as null rather than as NaN, which is not JSON)."""
    tail = losses[-max(1, len(losses) // 10):]
    mean = sum(tail) / len(tail)
    return round(mean, 4) if math.isfinite(mean) else None
