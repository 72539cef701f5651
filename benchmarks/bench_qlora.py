"""QLoRA on SmolLM2-135M (CPU): what each memory saver saves, in bytes, and a short run beside a full FT.

Model: ``edgequant.models.load_causal_lm(smollm2_gguf_path())``, the registry's Q4_1 GGUF dequantized to
float32 (134.5M parameters, embeddings tied to ``lm_head``). The 4-bit base is ``edgequant.quantize_``
with NF4, blocksize 64, on every Linear except ``lm_head``; the embeddings and norms stay float32.

Part 1, memory savers (one process; bytes counted from the tensors themselves, tied tensors once):

- base model: float32, bfloat16, NF4 without and with double quantization (``state_dict`` bytes: packed
  weights, absmax, nested absmax and maps, embeddings, norms), and the quantized Linear layers' bits per
  weight;
- optimizer states after one step (``optimizer.state`` bytes): ``torch.optim.AdamW`` (two float32
  tensors per parameter) vs ``edgequant.optim.AdamW8bit`` (uint8 states with a float32 absmax per block
  of 256), for the full model's parameters and for QLoRA's adapter parameters.

Part 2, training (each run in a fresh subprocess, same data, same steps): windows of ``--seq`` tokens of
/usr/share/common-licenses/Apache-2.0 in order, ``--batch`` windows per step, ``--steps`` steps
(cycling); the held-out loss is on the last 8 windows, never trained on.

- ``qlora``: NF4 + double-quant base, LoRA r=``--rank``, alpha=2r, dropout 0, on all Linear layers but
  lm_head, gradient checkpointing, ``AdamW8bit`` lr ``--lr-lora``;
- ``full``: the float32 model, every parameter trained, ``torch.optim.AdamW`` lr ``--lr-full``, no
  checkpointing.

Peak memory is ``VmHWM`` from /proc/self/status: for the whole process, and for training alone (the
high-water mark is reset through ``/proc/self/clear_refs`` once the model is loaded and quantized). Both
workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed float weights go back to the OS instead
of staying in the heap.

Usage: ``python benchmarks/bench_qlora.py [--steps 30] [--seq 64] [--batch 2] [--threads 1] [--skip-memory]
[--skip-train]``. Writes benchmarks/results/qlora.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

DATA = "/usr/share/common-licenses/Apache-2.0"
HELD_OUT_WINDOWS = 8


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.nbytes)
        if key in seen:
            continue
        seen.add(key)
        total += t.nbytes
    return total


def model_bytes(model: nn.Module) -> int:
    return tensor_bytes(model.state_dict(keep_vars=True).values())


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for state in opt.state.values() for v in state.values())


def load_float():
    from edgequant.models import load_causal_lm
    from edgequant.models.packaged import smollm2_gguf_path

    model, tok = load_causal_lm(smollm2_gguf_path())
    model.config.use_cache = False
    return model, tok


def nf4(model: nn.Module, double_quant: bool) -> nn.Module:
    import edgequant
    import edgequant.nn as eqnn

    edgequant.quantize_(model, eqnn.NF4Config(blocksize=64, compress_statistics=double_quant))
    return model


def adamw8bit(params, lr: float):
    from edgequant.optim import AdamW8bit

    return AdamW8bit(params, lr=lr)


def lora_config(rank: int):
    from edgequant.nn.lora_config import LoraConfig

    return LoraConfig(r=rank, alpha=2 * rank, dropout=0.0, target_modules="all-linear")


# -- part 1
# -----------------------------------------------------------------------------------------------------


def one_step_state_bytes(params: list[torch.Tensor], make_opt) -> int:
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opt = make_opt(params)
    opt.step()
    n = optimizer_state_bytes(opt)
    for p in params:
        p.grad = None
    del opt
    gc.collect()
    return n


def run_memory(rank: int) -> dict:
    from edgequant.nn.lora import apply_lora, is_quantized_linear, lora_parameters

    base, _ = load_float()
    n_params = sum(p.numel() for p in base.parameters())
    out = {"parameters": n_params, "base_bytes": {"float32": model_bytes(base)}}
    out["base_bytes"]["bfloat16"] = model_bytes(copy.deepcopy(base).to(torch.bfloat16))
    quantized = {}
    for dq in (False, True):
        m = nf4(copy.deepcopy(base), dq)
        key = "nf4_dq" if dq else "nf4"
        out["base_bytes"][key] = model_bytes(m)
        linears = [mod for mod in m.modules() if is_quantized_linear(mod)]
        weights = sum(mod.in_features * mod.out_features for mod in linears)
        # keep every state_dict alive while counting: state_dict() may build fresh tensors (maps, JSON
        # bytes) whose freed addresses the next layer's would reuse, and the de-duplication by address
        # would then skip them
        states = [mod.state_dict(keep_vars=True) for mod in linears]
        lin_bytes = tensor_bytes(t for sd in states for t in sd.values())
        bias_bytes = tensor_bytes(mod.bias for mod in linears if getattr(mod, "bias", None) is not None)
        out[f"{key}_linear"] = {
            "layers": len(linears),
            "weights": weights,
            "bytes": lin_bytes,
            "bits_per_weight": 8 * (lin_bytes - bias_bytes) / weights,
        }
        quantized[key] = m
    out["double_quant_saves_bytes"] = out["base_bytes"]["nf4"] - out["base_bytes"]["nf4_dq"]
    full = [p for p in base.parameters()]
    out["optimizer_full"] = {
        "params": sum(p.numel() for p in full),
        "torch_adamw": one_step_state_bytes(full, lambda ps: torch.optim.AdamW(ps, lr=1e-5)),
        "adamw8bit": one_step_state_bytes(full, lambda ps: adamw8bit(ps, 1e-5)),
    }
    qm = quantized["nf4_dq"]
    apply_lora(qm, lora_config(rank))
    lp = lora_parameters(qm)
    out["optimizer_lora"] = {
        "params": sum(p.numel() for p in lp),
        "rank": rank,
        "tensors": len(lp),
        "tensors_below_min_8bit_size": sum(p.numel() < 4096 for p in lp),
        "params_below_min_8bit_size": sum(p.numel() for p in lp if p.numel() < 4096),
        "torch_adamw": one_step_state_bytes(lp, lambda ps: torch.optim.AdamW(ps, lr=1e-4)),
        "adamw8bit": one_step_state_bytes(lp, lambda ps: adamw8bit(ps, 1e-4)),
    }
    return out


# -- part 2
# -----------------------------------------------------------------------------------------------------


def windows(tok, seq: int) -> torch.Tensor:
    with open(DATA, encoding="utf-8") as f:
        ids = tok(f.read(), return_tensors="pt").input_ids[0]
    n = ids.numel() // seq
    return ids[: n * seq].reshape(n, seq)


def train_worker(args) -> dict:
    from edgequant.nn.lora import apply_lora, lora_parameters
    from edgequant.nn.lora_checkpoint import enable_gradient_checkpointing

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok = load_float()
    data = windows(tok, args.seq)
    train, held = data[:-HELD_OUT_WINDOWS], data[-HELD_OUT_WINDOWS:]
    if args.worker == "qlora":
        nf4(model, True)
        apply_lora(model, lora_config(args.rank))
        enable_gradient_checkpointing(model)
        params = lora_parameters(model)
        opt = adamw8bit(params, args.lr_lora)
    else:
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=args.lr_full)
    gc.collect()
    setup_s = time.perf_counter() - t0
    hwm_setup = vm_kib("VmHWM")
    rss_start = vm_kib("VmRSS")  # libraries, model, optimizer, what the allocator kept from loading
    reset_peak()

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(input_ids=held, labels=held).loss.item()
        model.train()
        return loss

    before = held_out_loss()
    losses, times = [], []
    for step in range(args.steps):
        idx = [(step * args.batch + i) % train.shape[0] for i in range(args.batch)]
        batch = train[idx]
        t = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
        print(f"{args.worker} step {step}: loss {losses[-1]:.4f} {times[-1]:.2f}s", file=sys.stderr)
    after = held_out_loss()
    return {
        "mode": args.worker,
        "trainable_params": sum(p.numel() for p in params),
        "setup_s": setup_s,
        "step_s_median": statistics.median(times[2:] if len(times) > 4 else times),
        "step_s_all": times,
        "losses": losses,
        "first5_mean": statistics.mean(losses[:5]),
        "last5_mean": statistics.mean(losses[-5:]),
        "held_out_before": before,
        "held_out_after": after,
        "vmhwm_process_kib": max(hwm_setup, vm_kib("VmHWM")),
        "vmhwm_setup_kib": hwm_setup,
        "rss_train_start_kib": rss_start,
        "vmhwm_train_kib": vm_kib("VmHWM"),
        "train_windows": int(train.shape[0]),
    }


def run_training(args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    runs = {}
    for mode in ("qlora", "full"):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode]
        for opt in ("steps", "seq", "batch", "rank", "lr_lora", "lr_full", "threads"):
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"{mode} worker failed:\n{r.stderr[-4000:]}")
        runs[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f"{mode}: {runs[mode]['step_s_median']:.2f} s/step, train VmHWM "
            f"{runs[mode]['vmhwm_train_kib'] / 1024:.0f} MiB",
            file=sys.stderr,
        )
    return {
        "steps": args.steps,
        "seq": args.seq,
        "batch": args.batch,
        "rank": args.rank,
        "lr_lora": args.lr_lora,
        "lr_full": args.lr_full,
        "data": DATA,
        "runs": runs,
    }


# -- report
# -----------------------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# QLoRA on SmolLM2-135M (CPU)",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch threads {data['threads']}, commit {m['commit']}, "
        f"{m['date']}. "
        "Produced by `python benchmarks/bench_qlora.py`.",
        "",
    ]
    if "memory" in data:
        mem = data["memory"]
        b = mem["base_bytes"]
        lines += [
            f"## Memory savers, measured in bytes ({mem['parameters']:,} parameters)",
            "",
            "| what | bytes | vs float32 |",
            "|---|---:|---:|",
        ]
        for key, label in (
            ("float32", "base float32"),
            ("bfloat16", "base bfloat16"),
            ("nf4", "base NF4 (no double quant)"),
            ("nf4_dq", "base NF4 + double quant"),
        ):
            lines.append(f"| {label} | {b[key]:,} ({mib(b[key])}) | {b[key] / b['float32']:.3f} |")
        lines += [
            "",
            f"Double quantization saves {mem['double_quant_saves_bytes']:,} bytes. Quantized Linear layers "
            f"only ({mem['nf4_linear']['layers']} layers, {mem['nf4_linear']['weights']:,} weights, biases "
            "excluded): "
            f"{mem['nf4_linear']['bits_per_weight']:.4f} bits/weight without double quant, "
            f"{mem['nf4_dq_linear']['bits_per_weight']:.4f} with.",
            "",
            "| optimizer states after one step | params | torch AdamW (fp32) | AdamW8bit | saved |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, label in (
            ("optimizer_full", "full model"),
            ("optimizer_lora", f"LoRA r={mem['optimizer_lora']['rank']}"),
        ):
            o = mem[key]
            lines.append(
                f"| {label} | {o['params']:,} | {o['torch_adamw']:,} | {o['adamw8bit']:,} | "
                f"{o['torch_adamw'] - o['adamw8bit']:,} ({o['adamw8bit'] / o['torch_adamw']:.3f}x) |"
            )
        lora = mem["optimizer_lora"]
        if "tensors_below_min_8bit_size" in lora:
            lines += [
                "",
                "AdamW8bit keeps float32 states for tensors under 4,096 elements (bitsandbytes' "
                "min_8bit_size): "
                f"{lora['tensors_below_min_8bit_size']} of the {lora['tensors']} LoRA tensors "
                f"({lora['params_below_min_8bit_size']:,} parameters), hence more than 0.25x there.",
            ]
        lines.append("")
    if "training" in data:
        t = data["training"]
        tm = t.get("machine", m)
        if tm["commit"] != m["commit"]:
            lines += [
                f"(Training measured at commit {tm['commit']}, {tm['date']}, torch threads as above.)",
                "",
            ]
        lines += [
            f"## {t['steps']} steps, batch {t['batch']} x {t['seq']} tokens of Apache-2.0 "
            f"(QLoRA: NF4+DQ base, LoRA r={t['rank']} all-linear, grad checkpointing, "
            f"AdamW8bit lr {t['lr_lora']}; "
            f"full: float32, torch AdamW lr {t['lr_full']})",
            "",
            "| run | trainable | s/step (median) | loss first 5 → last 5 | held-out loss before → after | "
            "RSS at training start | VmHWM training | VmHWM process |",
            "|---|---:|---:|---|---|---:|---:|---:|",
        ]
        for mode, r in t["runs"].items():
            rss = mib(r["rss_train_start_kib"] * 1024) if "rss_train_start_kib" in r else "n/a"
            lines.append(
                f"| {mode} | {r['trainable_params']:,} | {r['step_s_median']:.2f} | "
                f"{r['first5_mean']:.3f} → {r['last5_mean']:.3f} | {r['held_out_before']:.3f} → "
                f"{r['held_out_after']:.3f} | {rss} | {mib(r['vmhwm_train_kib'] * 1024)} | "
                f"{mib(r['vmhwm_process_kib'] * 1024)} |"
            )
        q, f = t["runs"].get("qlora"), t["runs"].get("full")
        if q and f:
            lines += [
                "",
                f"QLoRA / full: time per step {q['step_s_median'] / f['step_s_median']:.2f}x, "
                f"training peak memory {q['vmhwm_train_kib'] / f['vmhwm_train_kib']:.2f}x.",
            ]
        lines.append("")
    return "\n".join(lines)


def keep_previous_sections(data: dict) -> None:
    """A part that was skipped keeps its previous results (with the commit and date they were measured at)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "qlora.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f)
    for key in ("memory", "training"):
        if key not in data and key in previous:
            data[key] = previous[key]
            data[key].setdefault("machine", previous["machine"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--lr-full", type=float, default=5e-5)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--worker", choices=("qlora", "full"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on the shared 2-core machine, with other jobs running, "
        "2 OpenMP threads made a SmolLM2 forward 5x slower than 1)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(train_worker(args)))
        return
    data: dict = {"machine": machine_info(), "threads": torch.get_num_threads()}
    if not args.skip_memory:
        data["memory"] = run_memory(args.rank)
    if not args.skip_train:
        data["training"] = run_training(args)
        data["training"]["machine"] = data["machine"]
    keep_previous_sections(data)
    write_results("qlora", data, markdown(data))


if __name__ == "__main__":
    main()
