"""xLSTM ops: public entry points (backend chosen in ops.py) and the plain-PyTorch references."""

from .mlstm_native import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step_native
from .ops import BACKENDS, mlstm, mlstm_step, resolve_backend, slstm
from .slstm_native import slstm_native

__all__ = [
    "mlstm",
    "mlstm_step",
    "slstm",
    "resolve_backend",
    "BACKENDS",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_chunkwise",
    "mlstm_step_native",
    "slstm_native",
]
