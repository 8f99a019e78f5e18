"""Run by tests/test_ddp.py under torchrun with 2 processes (gloo): one DDP SGD step in which each process
takes its half of a fixed batch; rank 0 saves the parameters. The test repeats the step in one process on the
whole batch and compares."""

import sys

import torch

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM

LR = 0.5


def model_and_batch():
    """The same micro xLSTM[1:1] (one mLSTM, one sLSTM block) and batch (4 x 24 tokens) in every process."""
    torch.manual_seed(0)
    config = xLSTMConfig(vocab_size=64, hidden_size=32, num_blocks=2, num_heads=2, slstm_at=[1], chunk_size=8,
                         backend="native")
    model = xLSTMForCausalLM(config)
    with torch.no_grad():  # gates and recurrent weights away from their init, so every path carries gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = torch.randint(0, 64, (4, 24), generator=torch.Generator().manual_seed(1))
    return model, batch


def sgd_step(model, input_ids):
    model.train()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return loss.detach()


def main(out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, batch = model_and_batch()
    half = batch.shape[0] // world
    sgd_step(DistributedDataParallel(model), batch[rank * half:(rank + 1) * half])
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
