"""Slow float64 references for the attention methods, written from the formulas one example at a time.

* :func:`rollout_reference`: attention rollout (Abnar & Zuidema 2020) as the full matrix product.
* :func:`chefer_reference`: Chefer et al. 2021, with the attention read from HuggingFace's
  ``output_attentions=True`` (a path independent of attrib's recorder) and gradients by autograd.
* :class:`TinyBlock` and :func:`attn_lrp_reference`: a one-block transformer classifier and
  AttnLRP's rules applied to it by hand (no autograd), with a ledger of what each rule absorbs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def rollout_reference(attentions: list[Tensor], token: int, head_fusion: str, residual: float) -> Tensor:
    """Row ``token`` of prod_l rownorm((1 - a) fuse(A_l) + a I), ``attentions[l]`` ``(N, H, L, L)``; ``(N, L)``."""
    n, _, length, _ = attentions[0].shape
    out = torch.zeros(n, length, dtype=torch.float64)
    for e in range(n):
        total = torch.eye(length, dtype=torch.float64)
        for a in attentions:
            heads = a[e].double()
            fused = {"mean": heads.mean(0), "max": heads.max(0).values, "min": heads.min(0).values}[head_fusion]
            mixed = (1 - residual) * fused + residual * torch.eye(length, dtype=torch.float64)
            for i in range(length):
                mixed[i] = mixed[i] / mixed[i].sum()
            total = mixed @ total  # later layers on the left
        out[e] = total[token]
    return out


def chefer_reference(model: Any, score: Any, token: int, **inputs: Any) -> Tensor:
    """Chefer et al.: R = I; R <- R + E_h[(grad A * A)^+] R per layer; row ``token``. ``score(out) -> (N,)``."""
    out = model(**inputs, output_attentions=True)
    attentions = list(out.attentions)
    grads = torch.autograd.grad(score(out).sum(), attentions)
    n, _, length, _ = attentions[0].shape
    result = torch.zeros(n, length, dtype=torch.float64)
    for e in range(n):
        r = torch.eye(length, dtype=torch.float64)
        for a, g in zip(attentions, grads):
            cam = (a[e].double() * g[e].double()).clamp(min=0).mean(0)
            r = r + cam @ r
        result[e] = r[token]
    return result


class TinyBlock(nn.Module):
    """A pre-norm transformer block and a linear classifier on token 0: ``(N, L, D) -> (N, C)``.

    h = x + W_o softmax(q k^T / sqrt(d) + mask) v, q/k/v = W LN1(x) (heads ``H``);
    y = h + W_2 GELU(W_1 LN2(h)); logits = W_c LNf(y)[:, 0].
    """

    def __init__(self, width: int = 8, heads: int = 2, hidden: int = 12, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.act = nn.GELU()
        self.cls = nn.Linear(width, classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2))
                if name.startswith("ln") and name.endswith("weight"):
                    p.add_(1.0)
        self.double().eval()

    def attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        n, length, width = x.shape
        d = width // self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(n, length, self.heads, d).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        if mask is not None:
            logits = logits + mask
        a = torch.softmax(logits, dim=-1)
        return self.o(torch.matmul(a, v).transpose(1, 2).reshape(n, length, width))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = x + self.attention(self.ln1(x), mask)
        y = h + self.fc2(self.act(self.fc1(self.ln2(h))))
        return self.cls(self.lnf(y)[:, 0])


def _stab(z: Tensor, eps: float) -> Tensor:
    return torch.where(z >= 0, z + eps, z - eps)


def _linear(x: Tensor, layer: nn.Linear, r: Tensor, eps: float, ledger: dict[str, float]) -> Tensor:
    """Epsilon rule, loop over output units; the bias and eps absorb R_j (b_j + ...) / z_j."""
    w, b = layer.weight.detach(), layer.bias.detach()
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(w.shape[0]):
            z = float(x[t] @ w[j] + b[j])
            out[t] += x[t] * w[j] * r[t, j] / _stab(torch.tensor(z), eps)
    ledger["linear"] = ledger.get("linear", 0.0) + float(r.sum() - out.sum())
    return out


def _layer_norm(x: Tensor, ln: nn.LayerNorm, r: Tensor, eps: float, ledger: dict[str, float]) -> Tensor:
    """y = w (x - mu)/sigma + b with sigma constant: epsilon rule on the linear map x -> w C x / sigma."""
    w, b = ln.weight.detach(), ln.bias.detach()
    out = torch.zeros_like(x)
    width = x.shape[1]
    centre = torch.eye(width, dtype=x.dtype) - 1.0 / width
    for t in range(x.shape[0]):
        sigma = torch.sqrt(x[t].var(unbiased=False) + ln.eps)
        jac = (w / sigma)[:, None] * centre  # dy_j/dx_i with sigma held constant
        y = jac @ x[t] + b
        for j in range(width):
            out[t] += x[t] * jac[j] * r[t, j] / _stab(y[j], eps)
    ledger["layer_norm"] = ledger.get("layer_norm", 0.0) + float(r.sum() - out.sum())
    return out


@torch.no_grad()
def attn_lrp_reference(
    block: TinyBlock, x: Tensor, target: int, mask: Tensor | None = None, eps: float = 1e-9
) -> tuple[Tensor, dict[str, float], float]:
    """AttnLRP relevance ``(L, D)`` of one example ``x`` ``(L, D)``, the absorbed amounts per rule, and the score.

    ``mask``: additive ``(L, L)`` or None. Rules: epsilon (linear, sums, layer norm with sigma held
    constant), softmax R_x = x (R - s sum R), epsilon-uniform for the two attention products, identity for GELU.
    """
    ledger: dict[str, float] = {}
    length, width = x.shape
    heads = block.heads
    d = width // heads
    # forward, keeping every intermediate
    a1 = block.ln1(x[None])[0]
    q, k, v = block.q(a1), block.k(a1), block.v(a1)
    qh, kh, vh = (t.view(length, heads, d).transpose(0, 1) for t in (q, k, v))
    raw = qh @ kh.transpose(-1, -2)
    logits = raw / math.sqrt(d) + (mask if mask is not None else 0)
    s = torch.softmax(logits, dim=-1)
    mixed_h = s @ vh
    mixed = mixed_h.transpose(0, 1).reshape(length, width)
    att = block.o(mixed)
    h = x + att
    a2 = block.ln2(h[None])[0]
    f1 = block.fc1(a2)
    g1 = block.act(f1)
    f2 = block.fc2(g1)
    y = h + f2
    yf = block.lnf(y[None])[0]
    logits_out = block.cls(yf[0])
    score = float(logits_out[target].detach())
    # backward: relevance
    r_out = torch.zeros(logits_out.shape[0], dtype=x.dtype)
    r_out[target] = score
    r_yf = torch.zeros_like(yf)
    r_yf[0] = _linear(yf[:1], block.cls, r_out[None], eps, ledger)[0]
    r_y = _layer_norm(y, block.lnf, r_yf, eps, ledger)
    z = _stab(y, eps)
    r_h, r_f2 = h * r_y / z, f2 * r_y / z
    ledger["sum"] = ledger.get("sum", 0.0) + float(r_y.sum() - r_h.sum() - r_f2.sum())
    r_g1 = _linear(g1, block.fc2, r_f2, eps, ledger)
    r_f1 = r_g1  # identity rule
    r_a2 = _linear(a2, block.fc1, r_f1, eps, ledger)
    r_h = r_h + _layer_norm(h, block.ln2, r_a2, eps, ledger)
    z = _stab(h, eps)
    r_x, r_att = x * r_h / z, att * r_h / z
    ledger["sum"] += float(r_h.sum() - r_x.sum() - r_att.sum())
    r_mixed = _linear(mixed, block.o, r_att, eps, ledger)
    r_mh = r_mixed.view(length, heads, d).transpose(0, 1)
    r_s = torch.zeros_like(s)
    r_vh = torch.zeros_like(vh)
    for hd in range(heads):  # mixed = s v: epsilon then uniform, loops over i, j, p
        for i in range(length):
            for p in range(d):
                zz = _stab(mixed_h[hd, i, p], eps)
                for j in range(length):
                    share = s[hd, i, j] * vh[hd, j, p] * r_mh[hd, i, p] / zz / 2
                    r_s[hd, i, j] += share
                    r_vh[hd, j, p] += share
    ledger["matmul"] = ledger.get("matmul", 0.0) + float(r_mh.sum() - r_s.sum() - r_vh.sum())
    masked = torch.isfinite(logits) & (logits > torch.finfo(logits.dtype).min / 2)
    x_soft = torch.where(masked, logits, torch.zeros_like(logits))
    r_logits = x_soft * (r_s - s * r_s.sum(-1, keepdim=True))
    ledger["softmax"] = float(r_s.sum() - r_logits.sum())
    # logits = raw / sqrt(d) + mask: the constant mask is a bias (0 where unmasked; R is 0 where masked)
    r_raw = r_logits * (raw / math.sqrt(d)) / _stab(logits, eps) if mask is not None else r_logits
    ledger["mask"] = float(r_logits.sum() - r_raw.sum())
    r_qh, r_kh = torch.zeros_like(qh), torch.zeros_like(kh)
    for hd in range(heads):  # raw = q k^T
        for i in range(length):
            for j in range(length):
                zz = _stab(raw[hd, i, j], eps)
                for p in range(d):
                    share = qh[hd, i, p] * kh[hd, j, p] * r_raw[hd, i, j] / zz / 2
                    r_qh[hd, i, p] += share
                    r_kh[hd, j, p] += share
    ledger["matmul"] += float(r_raw.sum() - r_qh.sum() - r_kh.sum())

    def merge(t: Tensor) -> Tensor:
        return t.transpose(0, 1).reshape(length, width)

    r_a1 = (
        _linear(a1, block.q, merge(r_qh), eps, ledger)
        + _linear(a1, block.k, merge(r_kh), eps, ledger)
        + _linear(a1, block.v, merge(r_vh), eps, ledger)
    )
    r_x = r_x + _layer_norm(x, block.ln1, r_a1, eps, ledger)
    return r_x, ledger, score
