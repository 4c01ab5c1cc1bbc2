"""`AdapterConfig`: one dataclass that expresses KaSA, its ablations and the baselines it is compared with.

Every method of the paper is a setting of the same adapted layer (see README, "Methods"):

=========================  ===============  ==============================  ==================
variant                    ``method``        switches                        regulariser
=========================  ===============  ==============================  ==================
LoRA                       ``"lora"``        -                               beta = gamma = 0
SVD truncation + LoRA      ``"kasa"``        ``singular_values=False``       beta = gamma = 0
+ singular values          ``"kasa"``        -                               beta = gamma = 0
+ L2                       ``"kasa"``        -                               gamma = 0
KaSA (full)                ``"kasa"``        -                               beta, gamma
PiSSA                      ``"pissa"``       -                               beta = gamma = 0
MiLoRA                     ``"milora"``      -                               beta = gamma = 0
=========================  ===============  ==============================  ==================
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal

Method = Literal["kasa", "lora", "pissa", "milora"]

_METHODS = ("kasa", "lora", "pissa", "milora")
_DEFAULT_BETA_GAMMA = {"kasa": (1e-4, 1e-3), "lora": (0.0, 0.0), "pissa": (0.0, 0.0), "milora": (0.0, 0.0)}


@dataclass
class AdapterConfig:
    """Configuration of the adapted layers.

    Args:
        method: ``"kasa"`` (truncate the ``r`` minor singular triplets, learn ``dU diag(dsigma) dV^T``),
            ``"lora"`` (``dU dV^T`` on the untouched weight), ``"pissa"`` (adapter initialised from the top-``r``
            triplets, base = residual) or ``"milora"`` (as PiSSA with the ``r`` smallest triplets).
        r: adapter rank; for KaSA also the number of dropped minor singular triplets. Must be below
            ``min(in_features, out_features)`` of every target.
        alpha: scaling numerator; the update is multiplied by ``eta = alpha / r``.
        dropout: dropout probability on the input of the adapter branch.
        target_modules: which layers to adapt. Each entry matches a module whose qualified name equals it or ends
            with ``"." + entry`` (as in PEFT), or, failing that, whose qualified name ``re.fullmatch``-es it.
            ``"auto"``: the paper's targets for the model's architecture (``model.config.model_type``; the table is
            ``kasa_lightning.kasa.targets.AUTO_TARGETS``), resolved by ``apply_adapters``.
        modules_to_save: modules outside the adapters that stay trainable and are saved with the adapter
            (e.g. ``["classifier"]`` for a sequence-classification head); matched like ``target_modules``.
        beta: weight of L2 = sum(dsigma^2). ``None`` means 1e-4 for KaSA and 0 for the other methods.
        gamma: weight of L3 (orthogonality of dU and dV). ``None`` means 1e-3 for KaSA, 0 otherwise.
        truncate: drop the ``r`` minor singular triplets of the base weight. ``None`` means True for KaSA and
            False for LoRA. PiSSA and MiLoRA always remove their initial triplets from the base (not a switch).
        singular_values: learn the diagonal ``dsigma``. ``None`` means True for KaSA, False otherwise.
        reg_form: ``"paper"``: L3 = ||dU^T dU - I_r||_F + ||dV^T dV - I_r||_F (paper Eq. 11, PEFT).
            ``"reference"``: L3 = ||dV dV^T - I_in||_F + ||dU dU^T - I_out||_F as in the authors' GLUE code.
        reg_reduction: ``"sum"`` over adapted layers (PEFT) or ``"mean"`` (the authors' GLUE code). The paper's
            published beta/gamma were tuned with ``"reference"`` + ``"mean"``; the default is the paper's equations
            (``"paper"`` + ``"sum"``), so that values carry over to and from PEFT.
        truncation_mode: ``"fold"`` replaces the base weight by the truncated one (no extra cost);
            ``"lowrank"`` leaves the base weight untouched and subtracts the dropped rank-r part in the forward
            (several task adapters can then share one base). Both give the same outputs.
        init_u, init_v, init_sigma: initialisation of dU (``"zeros"`` | ``"normal"``), dV (``"kaiming"`` |
            ``"normal"``) and dsigma (``"normal"`` | ``"zeros"`` | ``"ones"``). The defaults (zeros, kaiming,
            normal) are those of the authors' code and PEFT, and make the update zero at step 0; the others allow
            re-running the paper's initialisation study (appendix F.6). Ignored by PiSSA/MiLoRA.
        init_std: standard deviation of the ``"normal"`` initialisations of dU and dV.
        svd_cache_dir: directory for an on-disk cache of the truncation, keyed by a fingerprint of the weight and
            ``r`` (``None``: no cache).
        quantized_source: for a quantised (bitsandbytes) base, which weight is decomposed: ``"original"`` the
            full-precision weight read layer by layer from the model's safetensors checkpoint (``name_or_path``),
            ``"dequantized"`` the dequantised weight (no files needed; its small singular triplets carry the
            quantisation error). Ignored for other bases and by methods that remove nothing (LoRA).
            See ``quant_source.py`` and docs/quantization.md.
    """

    method: Method = "kasa"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | Literal["auto"] = field(default_factory=lambda: ["query", "value"])
    modules_to_save: list[str] = field(default_factory=list)
    beta: float | None = None
    gamma: float | None = None
    truncate: bool | None = None
    singular_values: bool | None = None
    reg_form: Literal["paper", "reference"] = "paper"
    reg_reduction: Literal["sum", "mean"] = "sum"
    truncation_mode: Literal["fold", "lowrank"] = "fold"
    init_u: Literal["zeros", "normal"] = "zeros"
    init_v: Literal["kaiming", "normal"] = "kaiming"
    init_sigma: Literal["normal", "zeros", "ones"] = "normal"
    init_std: float = 0.02
    svd_cache_dir: str | None = None
    quantized_source: Literal["original", "dequantized"] = "original"

    def __post_init__(self) -> None:
        def bad(setting: str, value: Any, fix: str) -> ValueError:
            return ValueError(f"AdapterConfig.{setting}={value!r} is invalid: {fix}")

        if self.method not in _METHODS:
            raise bad("method", self.method, f"choose one of {list(_METHODS)}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise bad("r", self.r, "the rank must be a positive integer, e.g. r=8")
        for setting in FLOAT_SETTINGS:  # before any comparison: nan < 0 is False, so nan would pass them all
            value = getattr(self, setting)
            if value is None and setting in ("beta", "gamma"):
                continue  # None: the method's default
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise bad(setting, value, "give a finite number (not nan, inf or a non-number)")
        if self.alpha < 0:
            raise bad("alpha", self.alpha, "alpha must be >= 0 (the update is scaled by alpha / r)")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", self.dropout, "dropout must be in [0, 1)")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        self.target_modules = list(self.target_modules)
        self.modules_to_save = list(self.modules_to_save)
        if not self.target_modules:
            raise bad("target_modules", self.target_modules, "name at least one layer, e.g. ['query', 'value']")
        if "auto" in self.target_modules and len(self.target_modules) > 1:
            raise bad("target_modules", self.target_modules, "give 'auto' alone, or name the layers")
        default_beta, default_gamma = _DEFAULT_BETA_GAMMA[self.method]
        self.beta = default_beta if self.beta is None else float(self.beta)
        self.gamma = default_gamma if self.gamma is None else float(self.gamma)
        if self.beta < 0:
            raise bad("beta", self.beta, "the L2 weight must be >= 0")
        if self.gamma < 0:
            raise bad("gamma", self.gamma, "the L3 weight must be >= 0")
        if self.truncate is None:
            self.truncate = self.method == "kasa"
        if self.truncate and self.method in ("pissa", "milora"):
            raise bad("truncate", self.truncate, f"{self.method} already removes its triplets; leave truncate unset")
        if self.singular_values is None:
            self.singular_values = self.method == "kasa"
        for setting, allowed in (
            ("reg_form", ("paper", "reference")),
            ("reg_reduction", ("sum", "mean")),
            ("truncation_mode", ("fold", "lowrank")),
            ("init_u", ("zeros", "normal")),
            ("init_v", ("kaiming", "normal")),
            ("init_sigma", ("normal", "zeros", "ones")),
            ("quantized_source", ("original", "dequantized")),
        ):
            if getattr(self, setting) not in allowed:
                raise bad(setting, getattr(self, setting), f"choose one of {list(allowed)}")
        if self.init_std <= 0:
            raise bad("init_std", self.init_std, "the standard deviation must be > 0")

    @property
    def scaling(self) -> float:
        """eta = alpha / r, the factor in front of the update."""
        return self.alpha / self.r

    @property
    def removes_triplets(self) -> bool:
        """Whether the base weight loses a rank-r part (KaSA truncation, PiSSA, MiLoRA)."""
        return bool(self.truncate) or self.method in ("pissa", "milora")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig settings {unknown}; known settings are {sorted(known)}")
        return cls(**values)

    def structure(self) -> dict[str, Any]:
        """The settings that decide the shapes and meaning of the saved tensors (compared when loading)."""
        return {
            "method": self.method,
            "r": self.r,
            "alpha": self.alpha,
            "truncate": self.truncate,
            "singular_values": self.singular_values,
            "target_modules": sorted(self.target_modules),
            "modules_to_save": sorted(self.modules_to_save),
        }


#: The ``float`` settings of :class:`AdapterConfig`; each must be a finite number (``beta``/``gamma`` may be None).
FLOAT_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AdapterConfig) if "float" in str(f.type))
