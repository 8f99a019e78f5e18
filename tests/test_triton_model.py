"""The model on the Triton kernels: a tiny xLSTM[1:1] (one mLSTM, one sLSTM block) with backend="triton",
run in the Triton interpreter on CPU, against the same weights on the native backend.

triton reads TRITON_INTERPRET when it compiles (at import of the kernel modules), so the check runs in a child
process with the variable set (kernel_checks.run_interpreted); this process's environment is untouched.
"""

from kernel_checks import run_interpreted

CHILD = r"""
from functools import partial

import torch
from conftest import tiny_model
from kernel_checks import rel_err, report

torch.manual_seed(0)
native = tiny_model("paper", hidden_size=16, num_heads=2, chunk_size=16, backend="native")
triton = tiny_model("paper", hidden_size=16, num_heads=2, chunk_size=16, backend="triton")
triton.load_state_dict(native.state_dict())
ids = torch.randint(3, 97, (2, 21))

rel = partial(rel_err, floor=1e-6)

# training forward + backward
for model in (native, triton):
    model.train()
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
logits_n, logits_t = native(ids).logits, triton(ids).logits
assert rel(logits_t, logits_n) < 1e-4, rel(logits_t, logits_n)
for (name, p_n), p_t in zip(native.named_parameters(), triton.parameters()):
    assert rel(p_t.grad, p_n.grad) < 1e-3, (name, rel(p_t.grad, p_n.grad))

# generation: cached (chunkwise prefill + fused decode step) == uncached == native
native.eval(); triton.eval()
kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
cached = triton.generate(ids[:, :7], **kwargs)
assert torch.equal(cached, triton.generate(ids[:, :7], use_cache=False, **kwargs))
assert torch.equal(cached, native.generate(ids[:, :7], **kwargs))
beams = triton.generate(ids[:, :7], num_beams=3, num_return_sequences=2, **kwargs)
assert torch.equal(beams, native.generate(ids[:, :7], num_beams=3, num_return_sequences=2, **kwargs))

# the Triton kernels really ran (no silent fallback to native)
import hf_xlstm.kernels.ops as ops
assert not ops._FALLBACK_WARNED, ops._FALLBACK_WARNED
report("ok")
"""


def test_model_trains_and_generates_on_triton_kernels():
    assert run_interpreted(["-c", CHILD], timeout=600) == ["ok"]
