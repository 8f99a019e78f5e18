"""Run by tests/test_fsdp.py under torchrun with 2 processes (gloo). For each case (a paper xLSTM[1:1] and a
large-block model, with and without activation checkpointing, a paper model with a tied LM head, one in bf16
mixed precision, and two whose process 1 builds the model on the meta device) the model is sharded with
hf_xlstm.fsdp.shard_model and trained a few SGD steps, each process on its half of every batch. Process 0 saves,
per case, the full parameters, the losses, how many parameters it holds and their dtypes, whether the head is
still tied, how often a block ran its forward, which processes built on the meta device, and the sharded model's
logits on a probe; it also writes the consolidated save_pretrained folder. The test repeats the steps in one
process on the whole batch and compares."""

import sys
from pathlib import Path

import torch

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM
from hf_xlstm.compat import set_activation_checkpointing

STEPS, LR, BATCH, SEQ, VOCAB = 3, 0.1, 4, 24, 64
CASES = {
    "paper": dict(block_style="paper", slstm_at=[1]),
    "paper-checkpointing": dict(block_style="paper", slstm_at=[1], checkpointing=True),
    "large": dict(block_style="large", output_logit_soft_cap=30.0),
    "large-checkpointing": dict(block_style="large", output_logit_soft_cap=30.0, checkpointing=True),
    "paper-tied": dict(block_style="paper", slstm_at=[1], tie_word_embeddings=True),
    # process 1 builds the model on the meta device (no memory, no init): its shards come from process 0
    "large-meta": dict(block_style="large", output_logit_soft_cap=30.0, meta_beyond_rank0=True),
    "paper-tied-meta": dict(block_style="paper", slstm_at=[1], tie_word_embeddings=True, meta_beyond_rank0=True),
    # the GPU runs' mixed precision: blocks compute with bf16 parameters, gradients are reduced in float32
    "paper-bf16": dict(block_style="paper", slstm_at=[1], bf16=True),
}


def model_and_batches(case: str, rank: int = 0):
    """The same tiny model (2 blocks, hidden 32) and batches (STEPS x 4 x 24 tokens) in every process (the model on
    the meta device beyond process 0 where the case says so)."""
    fields = dict(CASES[case])
    checkpointing = fields.pop("checkpointing", False)
    fields.pop("bf16", None)  # an option of the sharding, not of the model
    on_meta = fields.pop("meta_beyond_rank0", False) and rank != 0
    torch.manual_seed(0)
    config = xLSTMConfig(vocab_size=VOCAB, hidden_size=32, num_blocks=2, num_heads=2, chunk_size=8,
                         backend="native", **fields)
    with torch.device("meta" if on_meta else "cpu"):
        model = xLSTMForCausalLM(config)
    if not on_meta:
        with torch.no_grad():  # gates and recurrent weights away from their init, so every path carries gradient
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    if checkpointing:
        set_activation_checkpointing(model, True)
    batches = torch.randint(0, VOCAB, (STEPS, BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return model, batches


def probe():
    """Token ids the logits are compared on."""
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))


def train(model, batches) -> list[float]:
    """STEPS plain SGD steps (the update is linear in the gradient, so the comparison measures the sharding, not an
    optimizer's amplification of rounding); returns the losses."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for input_ids in batches:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def main(out: str) -> None:
    import torch.distributed as dist

    from hf_xlstm.fsdp import full_state_dict, shard_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for case in CASES:
        model, batches = model_and_batches(case, rank)
        built_on_meta = any(p.is_meta for p in model.parameters())
        num_params = sum(p.numel() for p in model.parameters())
        shard_model(model, bf16=CASES[case].get("bf16", False))
        calls = []
        # a pre-hook: the recomputation stops as soon as it has what the backward needs, possibly inside the mixer
        model.backbone.blocks[0].mixer.register_forward_pre_hook(lambda *args: calls.append(1))
        half = BATCH // world
        losses = torch.tensor(train(model, batches[:, rank * half:(rank + 1) * half]))
        dist.all_reduce(losses)  # the mean over the halves (equal token counts) is the whole batch's loss
        losses /= world
        local = sum(p.to_local().numel() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=probe()).logits
        on_meta = [None] * world
        dist.all_gather_object(on_meta, built_on_meta)
        state_dict = full_state_dict(model)  # every process takes part, process 0 gets the tensors
        if rank == 0:
            results[case] = dict(
                params=dict(state_dict), losses=losses.tolist(), logits=logits, local_params=local,
                num_params=num_params, param_dtypes={p.dtype for p in model.parameters()},
                tied=model.get_output_embeddings().weight is model.get_input_embeddings().weight,
                forward_calls=len(calls) - 1,  # the training steps' calls, without the probe's
                built_on_meta=on_meta)
            model.save_pretrained(Path(out) / case, state_dict=state_dict)  # empties the dict it is given
    if rank == 0:
        torch.save(results, Path(out) / "results.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
