"""hf_xlstm: xLSTM (mLSTM + sLSTM blocks, and the xLSTM-7B shape) as transformers models.

Importing the package registers the model with the Auto classes, so AutoConfig / AutoModel /
AutoModelForCausalLM resolve model_type "hf_xlstm" without trust_remote_code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_xlstm import xLSTMCache, xLSTMCacheLayer
from .configuration_xlstm import xLSTMConfig
from .modeling_xlstm import xLSTMForCausalLM, xLSTMModel, xLSTMPreTrainedModel

AutoConfig.register(xLSTMConfig.model_type, xLSTMConfig, exist_ok=True)
AutoModel.register(xLSTMConfig, xLSTMModel, exist_ok=True)
AutoModelForCausalLM.register(xLSTMConfig, xLSTMForCausalLM, exist_ok=True)

__all__ = ["xLSTMCache", "xLSTMCacheLayer", "xLSTMConfig", "xLSTMForCausalLM", "xLSTMModel", "xLSTMPreTrainedModel"]
__version__ = "0.1.0"
