"""`tflocal`: a lightweight transformer over frozen patch + token embeddings that scores local alignment.

Design (the paper that motivates it, arXiv 2604.11496, gives no public architecture; this one is ours):

    patches (P, Wi) --LN, Linear--> (P, d) + learned position --img_depth self-attention blocks--> X
    tokens  (L, Wt) --LN, Linear--> (L, d)                   --txt_depth self-attention blocks--> Y
                                                                 (masked to SOT..EOT; non-causal)
    each caption token t reads the image (`match`):
      attend    r_t = softmax(q_t K^T) V  (multi-head cross-attention), s_t = cos(u_t, r_t)
      max       s_t = max_p cos(u_t, k_p)                  (one location per token: FILIP with learned maps)
      colocate  s_t = max_p ½[cos(u_t, k_p) + cos(u_{t-1}, k_p)]
                (adjacent caption tokens must be satisfied *at the same patch*: "red" and "square" by one region)
    local  = Σ_t w_t s_t, w = softmax over valid tokens of a learned token weight (or a plain mean)
    score  = α · cos(global_i, global_t) + β · local    (α, β learned; α = 0 without `global_residual`)

Why this shape. Both sides are encoded *once* (per image, per caption) and only the last step is
pairwise, so a (Bi, Bt) matrix costs one cross step per pair. Pairs (`_local`) and matrices
(`_local_matrix`, a few large products instead of Bi x Bt small ones) are two implementations of the
same arithmetic; the contract tests check that a matrix's diagonal equals the pair scores. Caption tokens are
contextualised (the tower's own causal context plus `txt_depth` blocks), so the noun token of "red
square" can carry both words; the `match` rule then decides how binding is enforced: soft attention
mixes what it reads from several regions (a red circle + a blue square can add up to "red square"),
`max` and `colocate` make one location answer for the token (for `colocate`, for two adjacent tokens
at once). The global residual starts the head from the backbone's own judgement; the local term only
has to learn what the global cosine misses. `tokens="projected"` first maps tokens through the
tower's frozen linear token -> joint map (where it has one), `layer` picks which extracted layer
(final-layer CLIP tokens are known to lose locality). Text–text scores: yes (cosine of the pooled
caption encodings plus the global residual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from .base import CacheSpec, TorchHead, config_of, make_config, register_head, register_variant, seed_from
from .maxsim import token_mask, trim

Match = Literal["attend", "max", "colocate"]


@dataclass
class TFLocalConfig:
    layer: int = -1  # which extracted token layer to read (-1 final; others need `extract --layers`)
    width: int = 64  # d: both token sets are projected to this width
    heads: int = 4  # self-attention heads; width % heads == 0
    cross_heads: int = 1  # cross-attention heads of match="attend" (the pairwise step's cost grows with it)
    img_depth: int = 1  # self-attention blocks over an image's patches (run once per image)
    txt_depth: int = 1  # self-attention blocks over a caption's tokens (run once per caption)
    tokens: Literal["raw", "projected"] = "raw"  # raw tower tokens, or through the tower's frozen linear proj first
    match: Match = "attend"  # how a caption token reads the image (see the module docstring)
    pool: Literal["mean", "learned"] = "learned"  # plain mean over valid caption tokens, or learned token weights
    global_residual: bool = True  # add the backbone's own global cosine with a learned weight
    init_global: float = 10.0  # initial α (weight of the global cosine)
    init_local: float = 5.0  # initial β (weight of the local score)
    mlp_ratio: int = 2  # hidden width of each block's MLP, in units of `width`


class Block(nn.Module):
    """Pre-norm self-attention + MLP block; `mask` (B, L) True on valid tokens."""

    def __init__(self, d: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, dh)
        att = None if mask is None else mask[:, None, None, :]  # keys that may be attended to
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=att)  # (B, H, L, dh)
        x = x + self.out(y.transpose(1, 2).reshape(B, L, d))
        return x + self.mlp(self.ln2(x))


@register_head("tflocal", about="transformer over frozen patch + token embeddings, local scores + global residual")
class TFLocal(TorchHead, nn.Module):
    trainable = True
    text_text = True
    needs_texts = ("tokens", "global")

    def __init__(self, **kwargs: Any):
        nn.Module.__init__(self)
        self.cfg = c = make_config(TFLocalConfig, "tflocal", kwargs)
        if c.width % c.heads or c.width % c.cross_heads:
            raise InputError(f"tflocal: width {c.width} is not a multiple of heads {c.heads} and cross_heads {c.cross_heads}")
        if (c.match not in ("attend", "max", "colocate") or c.pool not in ("mean", "learned")
                or c.tokens not in ("raw", "projected")):
            raise InputError(f"tflocal: bad option in {c}")
        self.layer = c.layer
        self.needs_images = ("patches", "global")

    def config(self) -> dict[str, Any]:
        return config_of(self.cfg)

    # ---- construction ----------------------------------------------------------------------------
    def build(self, spec: CacheSpec) -> None:
        c, d = self.cfg, self.cfg.width
        torch.manual_seed(seed_from("tflocal", self.config()))
        wi, wt = spec.image_width, spec.text_width
        if c.tokens == "projected":
            if "image" not in spec.projections or "text" not in spec.projections:
                raise InputError(f"tflocal tokens='projected' needs the tower's linear token->joint maps; backbone "
                                 f"{spec.backbone!r} has none (attention pooling). Use tokens='raw'.")
            self.register_buffer("proj_image", torch.tensor(spec.projections["image"], dtype=torch.float32))
            self.register_buffer("proj_text", torch.tensor(spec.projections["text"], dtype=torch.float32))
            wi = wt = spec.embed_dim
        self.img_in = nn.Sequential(nn.LayerNorm(wi), nn.Linear(wi, d))
        self.txt_in = nn.Sequential(nn.LayerNorm(wt), nn.Linear(wt, d))
        self.img_pos = nn.Parameter(0.02 * torch.randn(spec.n_patches, d))
        self.img_blocks = nn.ModuleList(Block(d, c.heads, c.mlp_ratio) for _ in range(c.img_depth))
        self.txt_blocks = nn.ModuleList(Block(d, c.heads, c.mlp_ratio) for _ in range(c.txt_depth))
        self.img_ln, self.txt_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.to_u = nn.Linear(d, d)  # what a caption token asks for
        self.to_k = nn.Linear(d, d)  # where a patch answers (cross-attention keys / max-match targets)
        if c.match == "attend":
            self.to_q = nn.Linear(d, d)
            self.to_v = nn.Linear(d, d)
        if c.pool == "learned":
            self.to_w = nn.Linear(d, 1, bias=False)  # a bias would cancel in the softmax
        self.log_beta = nn.Parameter(torch.tensor(math.log(c.init_local)))
        if c.global_residual:
            self.log_alpha = nn.Parameter(torch.tensor(math.log(c.init_global)))
        self.spec = spec

    # ---- per-side encodings (once per image / caption) -----------------------------------------
    def encode_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["patches"].float()  # (B, P, Wi)
        if self.cfg.tokens == "projected":
            x = x @ self.proj_image  # (B, P, E)
        x = self.img_in(x) + self.img_pos
        for blk in self.img_blocks:
            x = blk(x)
        x = self.img_ln(x)
        rep = {"k": F.normalize(self.to_k(x), dim=-1), "g": F.normalize(batch["global"].float(), dim=-1)}  # (B, P, d), (B, E)
        if self.cfg.match == "attend":
            rep["v"] = self.to_v(x)  # (B, P, d)
        return rep

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = trim(batch)  # (B, L, Wt)
        if self.cfg.tokens == "projected":
            y = y @ self.proj_text
        mask = token_mask(batch["lengths"], y.shape[1], skip_first=False)  # attention sees SOT..EOT
        y = self.txt_in(y)
        for blk in self.txt_blocks:
            y = blk(y, mask)
        y = self.txt_ln(y)
        scored = token_mask(batch["lengths"], y.shape[1])  # scoring skips SOT (the same for every caption)
        if self.cfg.pool == "learned":
            logit = self.to_w(y).squeeze(-1).masked_fill(~scored, float("-inf"))
            w = torch.softmax(logit, dim=-1)  # (B, L)
        else:
            w = scored.float() / scored.sum(-1, keepdim=True).clamp(min=1)
        u = F.normalize(self.to_u(y), dim=-1)  # (B, L, d)
        rep = {"u": u, "w": w, "mask": scored, "g": F.normalize(batch["global"].float(), dim=-1)}
        if self.cfg.match == "attend":
            rep["q"] = self.to_q(y)
        return rep

    # ---- the pairwise step (leading dims broadcast: (B,) for pairs, (Bi, Bt) for matrices) --------
    def _local(self, im: dict[str, torch.Tensor], tx: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self.cfg.match
        if m == "attend":
            H = self.cfg.cross_heads
            q = _heads(tx["q"], H)  # (..., H, L, dh)
            k, v = _heads(im["k"], H), _heads(im["v"], H)  # (..., H, P, dh)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (..., H, L, P)
            r = (a @ v).transpose(-3, -2).flatten(-2)  # (..., L, d)
            s = (tx["u"] * F.normalize(r, dim=-1)).sum(-1)  # (..., L)
        else:
            c = tx["u"] @ im["k"].transpose(-1, -2)  # (..., L, P) cosines
            if m == "colocate":
                prev = torch.cat([c[..., :1, :], c[..., :-1, :]], dim=-2)  # token t-1's cosines (t = 0: itself)
                c = 0.5 * (c + prev)
            s = c.amax(-1)  # (..., L)
        return (s * tx["w"]).sum(-1)

    def _combine(self, local: torch.Tensor, gcos: torch.Tensor) -> torch.Tensor:
        out = self.log_beta.exp() * local
        if self.cfg.global_residual:
            out = out + self.log_alpha.exp() * gcos
        return out

    def pair_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._combine(self._local(images, texts), (images["g"] * texts["g"]).sum(-1))  # (B,)

    def matrix_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._combine(self._local_matrix(images, texts), images["g"] @ texts["g"].T)  # (Bi, Bt)

    def _local_matrix(self, im: dict[str, torch.Tensor], tx: dict[str, torch.Tensor]) -> torch.Tensor:
        """`_local` for every (image, caption), as a few large matrix products instead of Bi x Bt small ones.

        The same arithmetic as broadcasting `_local` over a pair axis (contract tests check the diagonal)."""
        Bi, P, d = im["k"].shape
        Bt, L, _ = tx["u"].shape
        if self.cfg.match == "attend":
            H = self.cfg.cross_heads
            dh = d // H
            q = tx["q"].reshape(Bt * L, H, dh).transpose(0, 1)  # (H, Bt*L, dh)
            k = im["k"].reshape(Bi * P, H, dh).transpose(0, 1)  # (H, Bi*P, dh)
            a = (q @ k.transpose(1, 2) / math.sqrt(dh)).view(H, Bt * L, Bi, P).softmax(-1)
            v = im["v"].view(Bi, P, H, dh).transpose(1, 2)  # (Bi, H, P, dh)
            r = a.permute(2, 0, 1, 3) @ v  # (Bi, H, Bt*L, dh)
            r = r.permute(0, 2, 1, 3).reshape(Bi, Bt, L, d)
            s = (tx["u"][None] * F.normalize(r, dim=-1)).sum(-1)  # (Bi, Bt, L)
        else:
            c = (tx["u"].reshape(Bt * L, d) @ im["k"].reshape(Bi * P, d).T).view(Bt, L, Bi, P)  # cosines
            if self.cfg.match == "colocate":
                c = 0.5 * (c + torch.cat([c[:, :1], c[:, :-1]], dim=1))  # with token t-1 at the same patch
            s = c.amax(-1).permute(2, 0, 1)  # (Bi, Bt, L)
        return (s * tx["w"][None]).sum(-1)

    def text_logits(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        za = F.normalize((a["u"] * a["w"][..., None]).sum(-2), dim=-1)  # (B, d) pooled caption encodings
        zb = F.normalize((b["u"] * b["w"][..., None]).sum(-2), dim=-1)
        return self._combine((za * zb).sum(-1), (a["g"] * b["g"]).sum(-1))


def _heads(x: torch.Tensor, H: int) -> torch.Tensor:
    """(..., N, d) -> (..., H, N, d/H)."""
    return x.unflatten(-1, (H, x.shape[-1] // H)).transpose(-3, -2)


# Registered variants: the ablation's axes (each a stable name) and a tiny one for tests.
for _name, _about, _kw in [
    ("tflocal_max", "tflocal, one location per caption token (max over patches)", dict(match="max")),
    ("tflocal_coloc", "tflocal, adjacent caption tokens matched at the same patch", dict(match="colocate")),
    ("tflocal_l2", "tflocal on the second-to-last layer's tokens (needs --layers -1,-2)", dict(layer=-2)),
    ("tflocal_proj", "tflocal on tokens through the tower's frozen linear proj", dict(tokens="projected")),
    ("tflocal_deep", "tflocal, 2+2 blocks of width 96", dict(width=96, img_depth=2, txt_depth=2)),
    ("tflocal_nores", "tflocal without the global residual", dict(global_residual=False)),
    ("tflocal_tiny", "tflocal, width 16, 2 heads (tests)", dict(width=16, heads=2, mlp_ratio=1)),
]:
    register_variant(_name, TFLocal, _about, **_kw)
