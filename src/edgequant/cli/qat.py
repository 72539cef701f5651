"""Quantization-aware fine-tuning with distillation from the float model.

Fine-tunes a causal LM (GGUF or Hugging Face folder; default: the packaged SmolLM2-135M) on a text with
its weights fake-quantized, distilling from the float model (KL on logits). Q4_0/Q4_1/Q8_0 learn their
fp16 block scales on ggml's exact grid; K-quants and Q5_x run the real codec in the forward pass; 'lsq' is
a learned-step grid of --bits bits (not a GGUF type: exported as F32 values). Writes a JSON-lines loss log
and, with --out, a GGUF with exactly the trained weights.
"""

from __future__ import annotations

import sys

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps
from edgequant.workflows.qat import FORMATS

EXAMPLES = """examples:
  edgequant qat --steps 50 --log loss.jsonl                 SmolLM2-135M, Q4_0 with learned scales, on GPL-3
  edgequant qat --format Q4_0 --out smollm2-qat-q4_0.gguf   ...and export a GGUF holding the trained weights
  edgequant qat model-dir/ --text corpus.txt --format lsq --bits 3 --eval-text heldout.txt --json
  edgequant quantize f32.gguf gptq.gguf Q4_0 --rounding gptq -f corpus.txt --token-embedding-type f32
  edgequant qat f32.gguf --text corpus.txt --init gptq.gguf --scale-lr 5e-5 --out qat.gguf
                                                            QAT from GPTQ's codes and scales
"""


def register(sub) -> None:
    p = add_command(sub, "qat", __doc__, EXAMPLES)
    p.add_argument(
        "model", nargs="?", default=None, help="GGUF file or HF folder (default: packaged SmolLM2)"
    )
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3", help="training text file")
    p.add_argument("--eval-text", default=None, help="held-out text: perplexity and KL before/after")
    p.add_argument("--format", default="Q4_0", choices=FORMATS, help="weight format (default Q4_0)")
    p.add_argument("--bits", type=int, default=4, help="bits for --format lsq (2..8)")
    p.add_argument("--group-size", type=int, default=32, help="group size for --format lsq")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--seq-len", type=int, default=256, help="tokens per training window (default 256; see --lr)"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--lr",
        type=float,
        default=1e-5,
        help="weight learning rate (default 1e-5, with --scale-lr 5e-4 and 256-token windows the best "
        "SmolLM2 Q4_0 setting measured: benchmarks/results/qat_smollm2.md)",
    )
    p.add_argument("--scale-lr", type=float, default=5e-4, help="learning rate of the quantizer scales")
    p.add_argument("--kd-start", type=float, default=1.0, help="distillation weight at step 0")
    p.add_argument("--kd-end", type=float, default=0.5, help="distillation weight at the last step")
    p.add_argument("--task-weight", type=float, default=0.0, help="weight of the next-token cross-entropy")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        default=None,
        metavar="FILE.gguf",
        help="start from this GGUF's codes and block scales (same model, --format Q4_0/Q4_1/Q8_0), e.g. one "
        "written by 'edgequant quantize --rounding gptq'; then a lower --scale-lr (5e-5 measured best on "
        "SmolLM2: at 5e-4 the scales drift from GPTQ's)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log", default=None, help="JSON-lines loss log (one record per step)")
    p.add_argument("--out", default=None, metavar="OUT.gguf", help="export the QAT model to GGUF")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.qat.lm_training import LMTrainConfig
    from edgequant.workflows.qat import finetune_qat

    train = LMTrainConfig(
        steps=args.steps,
        seq_len=args.seq_len,
        batch_size=args.batch,
        lr=args.lr,
        scale_lr=args.scale_lr,
        warmup=min(5, args.steps - 1),
        kd_start=args.kd_start,
        kd_end=args.kd_end,
        task_weight=args.task_weight,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    with tensor_progress("qat") as advance, flag_names(init_gguf="--init"):
        report = finetune_qat(
            args.model,
            args.text,
            train,
            fmt=args.format,
            bits=args.bits,
            group_size=args.group_size,
            eval_text=args.eval_text,
            log_path=args.log,
            out_path=args.out,
            threads=args.threads,
            init_gguf=args.init,
            on_step=lambda rec: advance(rec["step"] - 1, args.steps, f"kd {rec['kd']:.4f}"),
        )
    if args.json:
        print(dumps(report))
    else:
        _print_report(report, args.format, args.steps)
    sys.stdout.flush()
    return 0


def _print_report(report: dict, fmt: str, steps: int) -> None:
    print(f"qat {fmt}: {steps} steps, final KL {report['final_kd']:.4f}, {report['seconds']:.0f} s")
    if "init" in report:
        i = report["init"]
        print(
            f"started from {i['path']}: {i['tensors']} tensors, {i['moved']} of {i['weights']} weights moved"
        )
    if "after" in report:
        b, a, f = report["before"], report["after"], report["float"]
        print(f"held-out ppl: float {f['ppl']:.3f}, before QAT {b['ppl']:.3f}, after {a['ppl']:.3f}")
    if "export" in report:
        e = report["export"]
        print(
            f"{e['dst']}: {e['types']}, {e['bytes'] / 2**20:.1f} MiB, {e['bitwise_checked']} weights checked"
        )
