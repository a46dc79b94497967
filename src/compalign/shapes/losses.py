"""The losses of the tiny backbone's trainers: pretraining's CLIP loss and the fine-tuning methods' (finetune.py).

Pure functions of L2-normalised features, each with its formula in its docstring; the shared terms (symmetric
InfoNCE, the hard-negative 2-way loss, IGC, TGC) are compalign.core.training's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compalign.core.training import hardneg_loss, igc_loss, symmetric_infonce, tgc_loss


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP: L = 1/2 [CE(s * I T^T, diag) + CE(s * T I^T, diag)] over the (B, B) in-batch pairs.

    image, text (B, E) L2-normalised, row b of each the matching pair; scale the logit scale exp(t)."""
    return symmetric_infonce(scale * image @ text.T)  # (B, B) logits


def negclip_loss(image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP: the hard-negative captions join the image->text denominator; text->image is CLIP's.

    L = 1/2 [ -1/B sum_b log( e^{s <I_b,T_b>} / (sum_j e^{s <I_b,T_j>} + sum_n e^{s <I_b,N_n>}) )
              -1/B sum_b log( e^{s <T_b,I_b>} / sum_j e^{s <T_b,I_j>} ) ]
    image, text (B, E); negatives (N, E): every negative of the batch, each a distractor for every image."""
    target = torch.arange(len(image), device=image.device)
    i2t = scale * image @ torch.cat([text, negatives]).T  # (B, B + N); column b is the positive
    t2i = scale * text @ image.T  # (B, B)
    return 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target))


def clic_loss(image: torch.Tensor, positives: torch.Tensor, negative: torch.Tensor, negative_mask: torch.Tensor,
              scale: torch.Tensor, w_cont: float = 0.5, w_neg: float = 0.5, w_uni: float = 1.0) -> torch.Tensor:
    """CLIC (eq. 4-7): composites I_b of two images, P joined captions p_{1..P} of each (p_1 = "c_a. c_b.",
    p_2 = "c_b. c_a.", p_3.. other captions of the same two images), one hard negative n_b.

    L_cont = 1/P sum_p symmetric_InfoNCE(s * I p_p^T)                    (each positive set its own (B, B) matrix)
    L_neg  = 1/P sum_p mean_{b: mask} -log(e^{s <I_b,p_pb>} / (e^{s <I_b,p_pb>} + e^{s <I_b,n_b>}))
    L_uni  = 1/B sum_b || p_1b - p_2b ||^2                               (the two orders say the same thing)
    L      = w_cont L_cont + w_neg L_neg + w_uni L_uni
    image (B, E); positives (P, B, E), P >= 2; negative (B, E); negative_mask (B,) bool (False: no negative)."""
    n_pos = len(positives)
    cont = sum(symmetric_infonce(scale * image @ p.T) for p in positives) / n_pos  # each (B, B) logits
    neg_logit = scale * (image * negative).sum(-1)  # (B,)
    neg = sum(hardneg_loss(scale * (image * p).sum(-1), neg_logit[:, None], negative_mask[:, None]) for p in positives) / n_pos
    uni = (positives[0] - positives[1]).pow(2).sum(-1).mean()
    return w_cont * cont + w_neg * neg + w_uni * uni


def degla_loss(image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor,
               teacher_image: torch.Tensor, teacher_text: torch.Tensor, teacher_negatives: torch.Tensor,
               scale: torch.Tensor, w_distill: float = 0.005, w_igc: float = 0.1, w_tgc: float = 0.1,
               tgc_scale: float = 10.0) -> torch.Tensor:
    """DeGLA: global alignment under self-distillation, plus image- and text-grounded contrasts.

    L_clip    = symmetric_InfoNCE(s * I T^T)
    L_distill = sum_b ||I_b - I'_b||^2 + sum_b ||T_b - T'_b||^2 + sum_{b,k: mask} ||N_bk - N'_bk||^2
                (primes: the frozen EMA teacher's features of the same inputs; 0 when student == teacher)
    L_IGC     = igc_loss(s * I T^T, s * <I_b, N_bk>)            -- each image picks its caption among the batch's
                                                                   captions and its own hard negatives
    L_TGC     = tgc_loss(t * <T_b, T'_b>, t * <T_b, N_bk>)       -- each caption, as anchor, is closer to the
                                                                   teacher's view of itself than to its negatives
    L         = L_clip + w_distill L_distill + w_igc L_IGC + w_tgc L_TGC
    image, text (B, E); negatives (B, K, E) (any value where mask is False); mask (B, K) bool; teacher_* alike."""
    matrix = scale * image @ text.T  # (B, B)
    clip = symmetric_infonce(matrix)
    distill = (image - teacher_image).pow(2).sum() + (text - teacher_text).pow(2).sum()
    distill = distill + ((negatives - teacher_negatives).pow(2).sum(-1) * mask).sum()
    hard = scale * torch.einsum("be,bke->bk", image, negatives)  # (B, K) s(I_b, n_bk)
    text_hard = tgc_scale * torch.einsum("be,bke->bk", text, negatives)  # (B, K) t(c_b, n_bk)
    tgc = tgc_loss(tgc_scale * (text * teacher_text).sum(-1), text_hard, mask)
    return clip + w_distill * distill + w_igc * igc_loss(matrix, hard, mask) + w_tgc * tgc
