"""QAT configuration: frozen dataclasses that validate on creation and round-trip through JSON.

``QuantSpec`` describes one fake quantizer (what a weight or an activation goes through in the forward pass);
``QATConfig`` says which modules get which quantizers. Methods (``QuantSpec.method``):

* ``"ste"``      min-max fake quantization with the straight-through estimator (scale from the data, not
  learned)
* ``"lsq"``      learned step size (Esser et al. 2020)
* ``"lsq+"``     learned step and offset (Bhalgat et al. 2020), asymmetric, meant for activations
* ``"tanh"``     differentiable soft quantizer, tanh inside each step (DSQ-style), hard at eval
* ``"sigmoid"``  learned-rounding sigmoid surrogate: soft rounding ⌊u⌋ + σ(p(u − ⌊u⌋ − ½)) with learned p
* ``"gumbel"``   Gumbel-softmax soft rounding between ⌊u⌋ and ⌈u⌉, temperature τ(t) = τ₀·exp(−λt)
* ``"ggml"``     exactly ggml's Q4_0 / Q4_1 / Q8_0 grid (``format``), scale by ggml's rule or learned
  (``learn_scale``)
* ``"codec"``    any edgequant.gguf codec (K-quants...) in the forward pass, gradient passed straight through
* ``"bnb"``      bitsandbytes NF4/FP4 (``format``, blocks of ``group_size``, ``double_quant``) in the forward
* ``"noise"``    noise-injection training: ``W + η·ε``, ε ~ N(0, σ²_quant), η = ``noise_eta`` (weights; see
  qat/noise.py), hard min-max quantization in eval
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from edgequant.errors import ConfigError

METHODS = ("ste", "lsq", "lsq+", "tanh", "sigmoid", "gumbel", "ggml", "codec", "bnb", "noise")
BNB_FORMATS = ("NF4", "FP4")
GRANULARITIES = ("tensor", "channel", "group")
GGML_GRID_FORMATS = ("Q4_0", "Q4_1", "Q8_0")
CONFIG_VERSION = 1


@dataclass(frozen=True)
class QuantSpec:
    """One fake quantizer.

    bits: 2..8 (ignored by ``ggml``/``codec``, whose format fixes it). symmetric: signed grid
    [−2^(b−1), 2^(b−1)−1] around 0; otherwise an unsigned grid [0, 2^b − 1] with an offset.
    granularity: one scale per tensor, per output channel (dim 0; for activations the last dim) or per
    ``group_size`` consecutive elements along the last dim.
    """

    bits: int = 4
    method: str = "lsq"
    symmetric: bool = True
    granularity: str = "group"
    group_size: int = 32
    format: str | None = None  # ggml type for method "ggml" / "codec"
    learn_scale: bool = False  # method "ggml": learn the (fp16) block scale instead of ggml's max rule
    tau0: float = 1.0  # gumbel: initial temperature
    tau_decay: float = 1e-3  # gumbel: λ in τ(t) = τ₀·exp(−λt), t in optimizer steps
    softness: float = 5.0  # tanh: k (sharpness); sigmoid: initial p
    ema: float = 0.9  # ste on activations: EMA momentum of the observed range
    double_quant: bool = True  # bnb: quantize the absmax values too (bitsandbytes' compress_statistics)
    # learned steps' init: "lsq" (2·mean|v|/√Q_P) or "minmax" (max|v|/Q_P: QAT starts where RTN PTQ is)
    init: str = "lsq"
    noise_eta: float = 1.0  # noise: η in W + η·ε, ε ~ N(0, σ²_quant)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"QuantSpec.method={self.method!r} is unknown; choose one of {METHODS}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"QuantSpec.granularity={self.granularity!r}; choose one of {GRANULARITIES}")
        if self.method == "bnb" and (self.format not in BNB_FORMATS or self.group_size not in (64, 128, 256)):
            raise ConfigError(
                f"QuantSpec(method='bnb') needs format in {BNB_FORMATS} and group_size 64/128/256 (the "
                f"bitsandbytes block sizes used by Linear4bit), got {self.format!r}, {self.group_size}"
            )
        if self.method not in ("ggml", "codec", "bnb") and not 2 <= self.bits <= 8:
            raise ConfigError(f"QuantSpec.bits={self.bits}: QAT supports 2 to 8 bits")
        if self.granularity == "group" and self.group_size < 1:
            raise ConfigError(f"QuantSpec.group_size={self.group_size} must be >= 1")
        if self.method == "ggml" and self.format not in GGML_GRID_FORMATS:
            raise ConfigError(
                f"QuantSpec(method='ggml') needs format in {GGML_GRID_FORMATS}, got {self.format!r}; "
                "for K-quants and other types use method='codec'"
            )
        if self.method == "codec":
            from edgequant.gguf import get_codec  # raises UnsupportedTypeError naming the valid types

            if self.format is None:
                raise ConfigError("QuantSpec(method='codec') needs format, e.g. format='Q4_K'")
            get_codec(self.format)
        if self.method in ("tanh", "sigmoid") and self.softness <= 0:
            raise ConfigError(f"QuantSpec.softness={self.softness} must be > 0")
        if self.method == "gumbel" and (self.tau0 <= 0 or self.tau_decay < 0):
            raise ConfigError(f"gumbel needs tau0 > 0 and tau_decay >= 0, got {self.tau0}, {self.tau_decay}")
        if self.init not in ("lsq", "minmax"):
            raise ConfigError(f"QuantSpec.init={self.init!r}; choose 'lsq' or 'minmax'")
        if not self.noise_eta >= 0.0:
            raise ConfigError(f"QuantSpec.noise_eta={self.noise_eta} must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"QuantSpec.ema={self.ema} must be in [0, 1)")


@dataclass(frozen=True)
class QATConfig:
    """Which modules are quantized and how.

    weight: spec for the weights of every ``nn.Linear`` / ``nn.Conv2d`` (None: weights stay float).
    activation: spec for the inputs of those modules (None: activations stay float).
    skip: module-name substrings left untouched (default: the LM head, which llama ties to the embedding).
    edge_modules: name substrings of modules quantized only in the ``"all"`` scope (progressive scope's last
    stage).
    overrides: ``((name_substring, QuantSpec), ...)``: the first match gives that module's weight spec (mixed
    formats, e.g. ``(("down_proj", QuantSpec(method="codec", format="Q4_K")),)``).
    """

    weight: QuantSpec | None = field(default_factory=QuantSpec)
    activation: QuantSpec | None = None
    skip: tuple[str, ...] = ("lm_head",)
    edge_modules: tuple[str, ...] = ()
    overrides: tuple[tuple[str, QuantSpec], ...] = ()

    def weight_spec_for(self, module_name: str) -> QuantSpec | None:
        for pattern, spec in self.overrides:
            if pattern in module_name:
                return spec
        return self.weight

    def __post_init__(self) -> None:
        for item in self.overrides:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], QuantSpec)):
                raise ConfigError(
                    f"QATConfig.overrides entries must be (name_substring, QuantSpec), got {item!r}"
                )
        if self.weight is None and self.activation is None and not self.overrides:
            raise ConfigError("QATConfig quantizes nothing: set weight and/or activation")
        for name in ("weight", "activation"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, QuantSpec):
                raise ConfigError(f"QATConfig.{name} must be a QuantSpec or None, got {type(v).__name__}")
        if self.activation is not None and self.activation.method in ("ggml", "codec", "bnb", "noise"):
            raise ConfigError("activation quantizers cannot use the ggml/codec/bnb/noise weight methods")

    def to_json(self) -> str:
        d = asdict(self)
        d["version"] = CONFIG_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QATConfig:
        d = json.loads(text)
        if d.pop("version", None) != CONFIG_VERSION:
            raise ConfigError(f"QATConfig JSON has no or an unknown version (expected {CONFIG_VERSION})")
        names = {f.name for f in fields(QuantSpec)}
        for key in ("weight", "activation"):
            if d.get(key) is not None:
                d[key] = QuantSpec(**{k: v for k, v in d[key].items() if k in names})
        d["skip"] = tuple(d.get("skip", ()))
        d["edge_modules"] = tuple(d.get("edge_modules", ()))
        d["overrides"] = tuple(
            (pat, QuantSpec(**{k: v for k, v in s.items() if k in names}))
            for pat, s in d.get("overrides", ())
        )
        return cls(**d)
