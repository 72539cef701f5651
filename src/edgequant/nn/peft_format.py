"""LoRA adapters in PEFT's on-disk format, both ways (checked against peft 0.21.2 in tests/reference).

A PEFT adapter directory holds two files:

- ``adapter_config.json``: a ``peft.LoraConfig`` as JSON (``peft_type: "LORA"``, ``r``, ``lora_alpha``,
  ``lora_dropout``, ``target_modules``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``, ...). PEFT fills
  any key we leave out with its default.
- ``adapter_model.safetensors``: metadata ``{"format": "pt"}``; one tensor per adapter matrix, named
  ``base_model.model.<module path in the transformers model>.lora_A.weight`` (r x in) and ``...lora_B.weight``
  (out x r) — PEFT's names with the adapter name (``default``) removed.

Only what ``LoraLinear`` implements is accepted on load: plain LoRA on Linear layers. A config that asks
for DoRA, LoRA biases, ``fan_in_fan_out`` (GPT-2's Conv1D), ``modules_to_save``, layer selection by index, or
trainable tokens is refused with a ``ConfigError`` naming the key, rather than loaded into a model that would
compute something else. Pickled ``adapter_model.bin`` files are never opened.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from edgequant.core.atomic import atomic_write_bytes
from edgequant.errors import ConfigError, FormatError, OutputError, ShapeError
from edgequant.nn.lora import apply_lora, lora_modules, select_lora_targets
from edgequant.nn.lora_config import ALL_LINEAR, LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."

# Keys whose value, when set (not None/False/empty), asks for a computation LoraLinear does not implement.
_UNSUPPORTED = (
    "use_dora",
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "layers_to_transform",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "use_qalora",
    "alora_invocation_tokens",
    "megatron_config",
)


def peft_config_dict(
    config: LoraConfig,
    wrapped_names: list[str],
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> dict:
    """The ``adapter_config.json`` content (``all-linear`` is written as the wrapped names, as PEFT does)."""
    targets = config.target_modules
    target_json = (
        sorted(wrapped_names)
        if targets == ALL_LINEAR
        else (targets if isinstance(targets, str) else list(targets))
    )
    exclude = config.exclude_modules
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": target_json,
        "exclude_modules": list(exclude) if isinstance(exclude, tuple) else exclude,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "use_rslora": config.use_rslora,
        "init_lora_weights": True if config.init == "kaiming" else config.init,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def save_peft_adapter(
    model: torch.nn.Module,
    directory: str | os.PathLike[str],
    config: LoraConfig,
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> list[str]:
    """Write ``model``'s adapters to ``directory`` in PEFT's format; returns the tensor names written.

    ``model`` is the model the adapters were applied to (for transformers, the ``...ForCausalLM`` object, so
    that the names match ``PeftModel.from_pretrained(that_model, directory)``). Each file is written
    atomically.
    """
    modules = lora_modules(model)
    if not modules:
        raise ConfigError("the model has no LoRA adapters to save (apply_lora first)")
    tensors = {}
    for name, m in modules.items():
        tensors[f"{KEY_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{KEY_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    cfg = peft_config_dict(
        config, list(modules), base_model_name_or_path=base_model_name_or_path, task_type=task_type
    )
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the adapter directory {directory}: {e.strerror or e}") from None
    atomic_write_bytes(os.path.join(directory, WEIGHTS_NAME), save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(os.path.join(directory, CONFIG_NAME), (json.dumps(cfg, indent=2) + "\n").encode())
    return sorted(tensors)


def read_peft_config(directory: str | os.PathLike[str]) -> LoraConfig:
    """Parse ``directory/adapter_config.json`` into a ``LoraConfig``; refuse what LoRA here cannot compute."""
    path = os.path.join(os.fspath(directory), CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: not a PEFT adapter directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"{path}: peft_type is {kind!r}; only LORA adapters can be loaded")
    for key in _UNSUPPORTED:
        value = raw.get(key)
        if value not in (None, False, [], {}):
            raise ConfigError(
                f"{path}: {key}={value!r} is not supported by edgequant's LoRA (leave it unset)"
            )
    if raw.get("bias", "none") != "none":
        raise ConfigError(f"{path}: bias={raw['bias']!r} is not supported (only 'none')")
    init = raw.get("init_lora_weights", True)
    targets = raw.get("target_modules")
    try:
        return LoraConfig(
            r=raw.get("r", 8),
            alpha=raw.get("lora_alpha", 8),
            dropout=raw.get("lora_dropout", 0.0),
            target_modules=targets if isinstance(targets, str) else tuple(targets or ()),
            exclude_modules=raw.get("exclude_modules"),
            rank_pattern=raw.get("rank_pattern") or {},
            alpha_pattern=raw.get("alpha_pattern") or {},
            use_rslora=bool(raw.get("use_rslora", False)),
            init=init if init in ("gaussian",) else "kaiming",
        )
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_peft_adapter(model: torch.nn.Module, directory: str | os.PathLike[str]) -> LoraConfig:
    """Apply the adapter saved in ``directory`` (by PEFT or by ``save_peft_adapter``) to ``model``, in place.

    ``model`` is the bare base model (plain or quantized Linear layers). Every tensor in the file must match
    an adapter the config creates, with the right shape, and every adapter must get both its matrices.
    """
    directory = os.fspath(directory)
    config = read_peft_config(directory)
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        pickled = os.path.join(directory, "adapter_model.bin")
        hint = (
            f" (found {pickled}, a pickle: edgequant does not unpickle; re-save it with "
            "PeftModel.save_pretrained(..., safe_serialization=True))"
            if os.path.exists(pickled)
            else ""
        )
        raise ConfigError(f"{path} not found{hint}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise FormatError(f"{path} is not a readable safetensors file: {e}") from None
    # Check names and shapes before touching the model: a bad file leaves it as it was.
    expected = {}
    for name in select_lora_targets(model, config):
        base = model.get_submodule(name)
        rank = config.rank_for(name)
        expected[f"{KEY_PREFIX}{name}.lora_A.weight"] = (rank, int(base.in_features))
        expected[f"{KEY_PREFIX}{name}.lora_B.weight"] = (int(base.out_features), rank)
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unexpected or missing:
        raise FormatError(
            f"{path} does not fit the model's adapters: "
            + (f"{len(missing)} missing (first {missing[0]!r}) " if missing else "")
            + (f"{len(unexpected)} unexpected (first {unexpected[0]!r})" if unexpected else "")
            + "; was it saved for another model or another target_modules?"
        )
    for key, shape in expected.items():
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise ShapeError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the model's adapter needs "
                f"{shape} (rank or layer size differ)"
            )
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise FormatError(f"{path}: tensor {key!r} is not finite floating point ({value.dtype})")
    apply_lora(model, config)
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            m.lora_A.weight.copy_(tensors[f"{KEY_PREFIX}{name}.lora_A.weight"])
            m.lora_B.weight.copy_(tensors[f"{KEY_PREFIX}{name}.lora_B.weight"])
    return config
