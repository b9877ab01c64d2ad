"""Beyond logits: what the teacher computes inside (hidden states, attention, token attributions) and the three
extra distillation terms that copy it. Each beyond-logit arm trains with the distilled arm's logit loss plus one
weighted term, so `arm - distilled` measures what the extra signal adds.

* distilled_hidden (TinyBERT, arXiv 1909.10351; PKD): for student layer m = 0..M (0: the embedding output) and
  teacher layer g(m) = m N / M, MSE(H_s^m W_h, H_t^g(m)) over real tokens, W_h a learned linear projection where the
  widths differ (training only, never saved); plus, where the head counts match, for m >= 1 the MSE of the
  pre-softmax attention scores Q K^T / sqrt(d) over real query-key pairs, averaged over heads.
* distilled_attention (MiniLM, arXiv 2002.10957): last layer only, KL(A_t || A_s) of the attention distributions
  plus KL(VR_t || VR_s) of the value relations softmax(V V^T / sqrt(d)), per head, averaged over heads and real
  query tokens. Where the head counts differ, MiniLMv2's relation heads (arXiv 2012.15828) replace them: the Q-Q,
  K-K and V-V relations of both models split into r heads (r: the largest count, at most the teacher's heads, that
  divides both widths).
* distilled_attribution (AD-KD, arXiv 2305.10010, one step: gradient x input): per token, the gold label's logit's
  gradient times the embedding output. The teacher's map keeps each token's k largest dimensions (k: the student's
  width, at most the teacher's) and takes their L2 norm; the student's map is the L2 norm over all its dimensions;
  both are L2-normalised over the real tokens and the term is their squared distance (mean over cases). The
  teacher's maps are computed once per training case and cached (training.teacher_attributions); the student's need
  a double backward.

The teacher's hidden states and attention are computed in the loop (its forward runs once per batch, in eval mode,
without gradients). Cached instead, in fp32 for the default run's 637 training cases x 64 tokens x 384 dimensions,
they would take 63 MB per layer and tensor: 0.19 GB for a 2-layer student's three mapped hidden states, 0.19 GB for
the last layer's queries, keys and values, 1.1 GB for every layer's; at the justice profile's shape (1,925 x 128)
six times as much, held by every training process. `scripts/bench_train.py --arms` prints what the in-loop forward
costs against each arm's step (docs/performance.md).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from helpers.core.constants import BEYOND_ARMS

ONLINE_ARMS = ("distilled_hidden", "distilled_attention")  # need the teacher's forward per batch
ARM_WEIGHT = {"distilled_hidden": "hidden_weight", "distilled_attention": "attention_weight",
              "distilled_attribution": "attribution_weight"}  # the parameter weighting each arm's extra term


# ---------------------------------------------------------------- reading a model's inside
def _layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, model.base_model_prefix, model)
    return base.encoder.layer if hasattr(base, "encoder") else base.transformer.layer


def _projections(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The query, key and value projections of one transformer layer (BERT or DistilBERT)."""
    attention = layer.attention
    if hasattr(attention, "self"):
        return attention.self.query, attention.self.key, attention.self.value
    return attention.q_lin, attention.k_lin, attention.v_lin


def shape_of(model: nn.Module) -> tuple[int, int, int]:
    """(layers, width, heads) of a BERT or DistilBERT classifier."""
    c = model.config
    return (len(_layers(model)), getattr(c, "hidden_size", None) or c.dim,
            getattr(c, "num_attention_heads", None) or c.n_heads)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """g(m) = m N / M for m = 0..M (rounded): the teacher layer each student layer learns from (0: embeddings)."""
    return [round(m * teacher_layers / student_layers) for m in range(student_layers + 1)]


def relation_heads(width_s: int, width_t: int, heads_t: int) -> int:
    """MiniLMv2's relation-head count: the largest r <= the teacher's heads dividing both widths."""
    return next(r for r in range(heads_t, 0, -1) if width_s % r == 0 and width_t % r == 0)


@contextmanager
def capture_projections(model: nn.Module, layers: list[int]) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Within the block, {("q"|"k"|"v", layer): [B, T, width]} of each forward pass, for layers numbered 1..L."""
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for i in layers:
        for name, module in zip("qkv", _projections(_layers(model)[i - 1])):
            handles.append(module.register_forward_hook(
                lambda _m, _args, out, key=(name, i): store.__setitem__(key, out)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, w = x.shape
    return x.float().view(b, t, heads, w // heads).transpose(1, 2)  # [B, h, T, d]


def relation_scores(x: torch.Tensor, y: torch.Tensor, heads: int) -> torch.Tensor:
    """x_h y_h^T / sqrt(d) per head: [B, h, T, T] (x = Q, y = K: the pre-softmax attention scores)."""
    xh, yh = _heads(x, heads), _heads(y, heads)
    return xh @ yh.transpose(-1, -2) / math.sqrt(xh.shape[-1])


def _masked_softmax_log(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over keys, padding keys excluded (mask [B, T], 1 = real token)."""
    return torch.log_softmax(scores.masked_fill(~mask[:, None, None, :].bool(), -1e9), dim=-1)


def relation_kl(scores_t: torch.Tensor, scores_s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) per query row, averaged over heads and real query tokens."""
    log_t, log_s = _masked_softmax_log(scores_t, mask), _masked_softmax_log(scores_s, mask)
    rows = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, h, T]
    real = mask[:, None, :].float().expand_as(rows)
    return (rows * real).sum() / real.sum()


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the real entries; mask broadcasts against a and b."""
    mask = mask.float().expand_as(a)
    return (((a - b) ** 2) * mask).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------- the terms
@dataclass
class Term:
    """One beyond-logit arm's extra term for one student x teacher pair: what it uses and what it had to leave out."""

    arm: str
    student: tuple[int, int, int]
    teacher: tuple[int, int, int]
    mapping: list[int] = field(default_factory=list)
    use_attention: bool = True  # distilled_hidden: the attention-score part (head counts must match)
    relation_heads: int = 0  # distilled_attention: 0 = the heads themselves (counts match), else MiniLMv2's r
    projection: nn.Module | None = None  # distilled_hidden: W_h (training only)
    notes: list[str] = field(default_factory=list)

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.projection is None else list(self.projection.parameters())

    def describe(self) -> str:
        ws, wt = self.student[1], self.teacher[1]
        if self.arm == "distilled_hidden":
            pairs = ", ".join(f"{m}<-{g}" for m, g in enumerate(self.mapping))
            proj = f"projection {ws}->{wt}" if self.projection is not None else "no projection (same width)"
            what = f"hidden states of layers {pairs} (0: embeddings), {proj}"
            return what + ("; attention scores of the mapped layers" if self.use_attention else "")
        if self.arm == "distilled_attention":
            return ("last-layer attention distributions and value relations, per head" if not self.relation_heads
                    else f"last-layer Q-Q, K-K and V-V relations in {self.relation_heads} relation heads")
        return "gradient x input token maps (teacher: top-k dimensions, k = student width)"


def plan_term(arm: str, student: nn.Module, teacher: nn.Module, seed: int) -> Term:
    """The extra term of `arm` for this student and teacher: layer map, projection, which parts the pair can take."""
    s, t = shape_of(student), shape_of(teacher)
    term = Term(arm, s, t)
    if arm == "distilled_hidden":
        term.mapping = layer_map(s[0], t[0])
        if s[1] != t[1]:
            with torch.random.fork_rng(devices=[]):  # its own seed: the arm's dropout stream stays the distilled one's
                torch.manual_seed(seed + 7919)
                term.projection = nn.Linear(s[1], t[1])
        if s[2] != t[2]:
            term.use_attention = False
            term.notes.append(f"attention-score term left out: the student has {s[2]} heads, the teacher {t[2]} "
                              f"(TinyBERT matches head by head)")
    elif arm == "distilled_attention":
        if s[2] != t[2]:
            term.relation_heads = relation_heads(s[1], t[1], t[2])
            term.notes.append(f"head counts differ ({s[2]} vs {t[2]}): MiniLMv2 relations in "
                              f"{term.relation_heads} relation heads")
    elif arm != "distilled_attribution":
        raise ValueError(f"arm {arm!r}: not a beyond-logit arm ({', '.join(BEYOND_ARMS)})")
    return term


def student_layers_needed(term: Term) -> list[int]:
    if term.arm == "distilled_hidden":
        return list(range(1, term.student[0] + 1)) if term.use_attention else []
    return [term.student[0]] if term.arm == "distilled_attention" else []


def teacher_layers_needed(term: Term) -> list[int]:
    if term.arm == "distilled_hidden":
        return sorted(set(term.mapping[1:])) if term.use_attention else []
    return [term.teacher[0]] if term.arm == "distilled_attention" else []


@torch.no_grad()
def teacher_internals(teacher: nn.Module, term: Term, ids: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[tuple[torch.Tensor, ...], dict]:
    """The teacher's hidden states and captured projections for one batch (eval mode, no gradients)."""
    with capture_projections(teacher, teacher_layers_needed(term)) as store:
        out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=term.arm == "distilled_hidden")
    return (out.hidden_states or ()), dict(store)


def hidden_term(term: Term, hs: tuple, ht: tuple, qs: dict, qt: dict, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT's task-distillation term: hidden-state MSE (projected) plus attention-score MSE where heads match."""
    real = mask[:, :, None]
    loss = hs[0].new_zeros((), dtype=torch.float32)
    for m, g in enumerate(term.mapping):
        h = hs[m].float() if term.projection is None else term.projection(hs[m].float())
        loss = loss + masked_mse(h, ht[g].float(), real)
    if term.use_attention:
        pairs = (mask[:, None, :, None] * mask[:, None, None, :])
        for m, g in enumerate(term.mapping[1:], start=1):
            loss = loss + masked_mse(relation_scores(qs[("q", m)], qs[("k", m)], term.student[2]),
                                     relation_scores(qt[("q", g)], qt[("k", g)], term.teacher[2]), pairs)
    return loss


def attention_term(term: Term, qs: dict, qt: dict, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM's term on the last layers: attention distributions and value relations (or MiniLMv2's relations)."""
    m, g = term.student[0], term.teacher[0]
    if not term.relation_heads:
        h_s, h_t = term.student[2], term.teacher[2]
        att = relation_kl(relation_scores(qt[("q", g)], qt[("k", g)], h_t),
                          relation_scores(qs[("q", m)], qs[("k", m)], h_s), mask)
        val = relation_kl(relation_scores(qt[("v", g)], qt[("v", g)], h_t),
                          relation_scores(qs[("v", m)], qs[("v", m)], h_s), mask)
        return att + val
    r = term.relation_heads
    return sum(relation_kl(relation_scores(qt[(x, g)], qt[(x, g)], r), relation_scores(qs[(x, m)], qs[(x, m)], r),
                           mask) for x in "qkv")


def normalise_map(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A token map [B, T] with padding zeroed, L2-normalised over each case's real tokens."""
    a = a.float() * mask.float()
    return a / a.norm(dim=1, keepdim=True).clamp(min=1e-12)


def attribution_maps(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                     create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient x input at the embedding output for the gold label [B, T, width], logits [B, K])."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    emb = out.hidden_states[0]
    score = out.logits.float().gather(1, labels[:, None]).sum()
    grad, = torch.autograd.grad(score, emb, create_graph=create_graph)
    return emb * grad, out.logits


def teacher_token_map(attr: torch.Tensor, k: int, mask: torch.Tensor) -> torch.Tensor:
    """AD-KD's teacher map: each token's k largest |attribution| dimensions, their L2 norm, normalised [B, T]."""
    top = attr.float().abs().topk(min(k, attr.shape[-1]), dim=-1).values
    return normalise_map(top.norm(dim=-1), mask)


def attribution_term(attr_s: torch.Tensor, teacher_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared distance between the student's normalised map (L2 over all dimensions) and the teacher's."""
    student = normalise_map(attr_s.float().norm(dim=-1), mask)
    return ((student - teacher_map[:, :student.shape[1]].float()) ** 2).sum(1).mean()


def forward_with_term(net: nn.Module, model: nn.Module, term: Term, teacher: nn.Module | None,
                      batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's training forward for a beyond-logit arm: (logits, the arm's extra term) for one batch.

    `net` runs the forward (the model, or its data-parallel wrapper); `model` is where the projections are read."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if term.arm == "distilled_attribution":
        attr, logits = attribution_maps(net, ids, mask, batch["labels"], create_graph=True)
        return logits, attribution_term(attr, batch["teacher_map"], mask)
    hidden_t, proj_t = teacher_internals(teacher, term, ids, mask)
    with capture_projections(model, student_layers_needed(term)) as proj_s:
        out = net(input_ids=ids, attention_mask=mask, output_hidden_states=term.arm == "distilled_hidden")
    if term.arm == "distilled_hidden":
        return out.logits, hidden_term(term, out.hidden_states, hidden_t, proj_s, proj_t, mask)
    return out.logits, attention_term(term, proj_s, proj_t, mask)
