"""``QuantizationConfig``: how the base model is quantised at load (bitsandbytes through transformers).

It maps onto transformers' ``BitsAndBytesConfig``; ``KaSAModule(quantization=...)`` passes it to
``from_pretrained``. Plain PyTorch users call ``to_bitsandbytes_config()`` themselves:

    bnb_config = QuantizationConfig(bits=4).to_bitsandbytes_config()
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", quantization_config=bnb_config)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .bnb import QUANT_EXTRA, import_bitsandbytes

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class QuantizationConfig:
    """Quantisation of the frozen base weights.

    Args:
        bits: 4 (``Linear4bit``: NF4 or FP4 codes, one absmax per block of 64) or 8 (``Linear8bitLt``: LLM.int8,
            int8 codes with one scale per row).
        quant_type: 4-bit code book, ``"nf4"`` (normal-float, QLoRA's choice) or ``"fp4"``. 8-bit has none:
            leave it at ``"nf4"``, the default, which 8-bit ignores.
        double_quant: 4-bit only: quantise the block absmax values too (about 0.37 bits per parameter less).
        compute_dtype: dtype of the 4-bit matmul (``"float32"``, ``"bfloat16"``, ``"float16"``).
        quant_storage: dtype the 4-bit codes are packed in (``"uint8"``; ``"bfloat16"`` etc. for sharding).
    """

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = False
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"

    def __post_init__(self) -> None:
        def bad(setting: str, value: Any, fix: str) -> ValueError:
            return ValueError(f"quantization.{setting}={value!r} is invalid: {fix}")

        if isinstance(self.bits, bool) or self.bits not in (4, 8):
            raise bad("bits", self.bits, "bitsandbytes quantises to 4 or 8 bits; choose bits: 4 or bits: 8")
        if self.quant_type not in ("nf4", "fp4"):
            raise bad("quant_type", self.quant_type, "choose 'nf4' or 'fp4'")
        if self.bits == 8 and self.quant_type == "fp4":
            raise bad("quant_type", self.quant_type, "fp4 is a 4-bit code book; use bits: 4, or drop quant_type")
        if self.bits == 8 and self.double_quant:
            raise bad("double_quant", self.double_quant, "double quantisation is a 4-bit option; use bits: 4")
        if self.compute_dtype not in _DTYPES:
            raise bad("compute_dtype", self.compute_dtype, f"choose one of {list(_DTYPES)}")
        if self.quant_storage not in ("uint8", *_DTYPES):
            raise bad("quant_storage", self.quant_storage, f"choose one of {['uint8', *_DTYPES]}")
        if self.bits == 8 and self.quant_storage != "uint8":
            raise bad("quant_storage", self.quant_storage, "the storage dtype is a 4-bit option; use bits: 4")

    def to_bitsandbytes_config(self) -> Any:
        """transformers' ``BitsAndBytesConfig`` for these settings (imports bitsandbytes quietly, offline; raises
        ``ImportError`` naming the ``quant`` extra without it)."""
        import_bitsandbytes()
        import torch
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, self.quant_storage),
        )


__all__ = ["QUANT_EXTRA", "QuantizationConfig"]
