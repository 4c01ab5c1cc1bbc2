"""The KaSA method in pure PyTorch (no Lightning): config, truncation, adapted layer, injection,
regularisers, adapter state and PEFT export. Each concept lives in its own module."""

from .bank import AdapterBank
from .bnb import import_bitsandbytes
from .config import AdapterConfig
from .inject import (
    AdapterRecord,
    adapted_layers,
    adapter_config,
    adapter_parameters,
    adapter_record,
    apply_adapters,
    find_targets,
    layer_groups,
    merge_adapters,
    merge_and_unload,
    stack_adapters,
    unload_adapters,
    unmerge_adapters,
    unstack_adapters,
)
from .layer import AdaptedLayer, WeightState
from .peft_format import export_peft
from .quantization import QuantizationConfig
from .regularizers import AdapterLossTerms, adapter_loss, record_in_forward
from .saving import adapter_state_dict, load_adapter, load_adapter_state_dict, read_adapter, save_adapter
from .svd import Triplets, extreme_triplets, weight_fingerprint
from .terms import LayerTerms, layer_terms

__all__ = [
    "AdaptedLayer",
    "AdapterBank",
    "AdapterConfig",
    "AdapterLossTerms",
    "AdapterRecord",
    "LayerTerms",
    "QuantizationConfig",
    "Triplets",
    "WeightState",
    "adapted_layers",
    "adapter_config",
    "adapter_loss",
    "adapter_parameters",
    "adapter_record",
    "adapter_state_dict",
    "apply_adapters",
    "export_peft",
    "extreme_triplets",
    "find_targets",
    "import_bitsandbytes",
    "layer_groups",
    "layer_terms",
    "load_adapter",
    "load_adapter_state_dict",
    "merge_adapters",
    "merge_and_unload",
    "read_adapter",
    "record_in_forward",
    "save_adapter",
    "stack_adapters",
    "unload_adapters",
    "unmerge_adapters",
    "unstack_adapters",
    "weight_fingerprint",
]
