"""Knowledge distillation from the float model: KL(p_teacher ‖ p_student) on logits.

``kd_kl_loss(student, teacher, T, mask)`` = T²·mean over positions of Σ_v p_t(v)·(log p_t(v) − log p_s(v)),
with p = softmax(logits/T). The T² factor keeps gradient magnitudes comparable across temperatures (Hinton
et al.). ``mask`` (bool, the logits' shape without the vocab dim) selects the positions that count.
``distillation_loss(task, kd, alpha)`` = task + α·kd, the spec's L_total = L_task + α·L_KD (α decays: see
``schedules.DecayingWeight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgequant.errors import ShapeError


def kd_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(
            f"student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}"
        )
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    if mask is not None:
        kl = kl[mask]
    return kl.mean() * temperature**2


def distillation_loss(task: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    return task + alpha * kd
