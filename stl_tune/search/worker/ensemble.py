"""Which trials make the ensemble: greedy ensemble selection with replacement (Caruana et al., ICML
2004: "Ensemble selection from libraries of models", the last step of Auto-sklearn and AutoGluon)
over the validation predictions that a search's completed trials kept (search/worker/keep.py).

greedy_selection is the algorithm, a pure function. It starts empty; each round adds the model
whose addition makes the average of the picked models' probabilities score best on the validation
images, a model already picked included (with replacement: picking it again raises its weight);
once `max_members` distinct models are in, only they may be picked again. After `rounds` rounds it
keeps the round whose ensemble scored best (the earliest of equals: the fewest picks) and weighs
each model by the times it was picked by then. The score is accuracy, ties broken by the negative
log-likelihood (on a few hundred validation images accuracy ties often); a tie between models goes
to the one listed first (select lists the trials best first). Its first pick is the best single
model, so with max_members=1 the ensemble is that model.
A member's kept probabilities are the softmax of its flip-TTA-averaged logits; the ensemble file
(outputs.Ensemble) averages the members' probabilities per view and then the views' log: on an
image where the two orders disagree, the file's validation accuracy can differ from the
selection's.
Written here rather than taken from a library: Auto-sklearn's EnsembleSelection is the well-known
implementation, but it needs scikit-learn's estimator API and Auto-sklearn itself for ~20 lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stl_tune.errors import StudyError
from stl_tune.search.worker.keep import Kept

ROUNDS = 25  # picks at most: weights in steps of 1/25 at the finest


def _score(probs: Tensor, labels: Tensor) -> tuple[float, float]:
    """(accuracy, -NLL) of averaged probabilities [N, C]: larger is better, compared in that order."""
    acc = (probs.argmax(1) == labels).double().mean().item()
    nll = -probs.gather(1, labels[:, None]).clamp(min=1e-12).log().mean().item()
    return acc, -nll


def greedy_selection(probs: Tensor, labels: Tensor, max_members: int, rounds: int = ROUNDS) -> list[int]:
    """How many times each of M models is picked (len M, 0 for those left out): probs [M, N, C] are
    the models' class probabilities of N validation images, labels [N] their classes."""
    if max_members < 1 or rounds < 1:
        raise ValueError(f"max_members and rounds must be >= 1, got {max_members}, {rounds}")
    probs = probs.double()
    total = torch.zeros_like(probs[0])
    counts = [0] * len(probs)
    best: tuple[tuple[float, float], list[int]] | None = None
    for picks in range(1, rounds + 1):
        chosen = [i for i, c in enumerate(counts) if c]
        pool = chosen if len(chosen) >= max_members else range(len(probs))
        scores = {i: _score((total + probs[i]) / picks, labels) for i in pool}
        pick = max(pool, key=lambda i: (scores[i], -i))  # the first listed of equals
        total += probs[pick]
        counts[pick] += 1
        if best is None or scores[pick] > best[0]:  # a tie keeps the earlier round: fewer picks
            best = (scores[pick], list(counts))
    return best[1]


@dataclass
class Selection:
    members: list[tuple[Kept, float]]  # (trial, weight), the weights summing to 1, heaviest first
    val_acc: float  # the weighted average's accuracy on the validation images
    best_single_val_acc: float  # the best single model's (the first pick's)
    candidates: int  # completed trials it chose from
    other_split: int  # completed trials left out: predictions of another validation split or image size
    without_model: int  # completed trials left out: their model not kept (an ensemble of the trial models)
    split: str  # the validation split and image size, in words


def select(kept: list[Kept], max_members: int, need_models: bool, rounds: int = ROUNDS) -> Selection:
    """The ensemble of at most `max_members` trials among `kept` (best first, keep.kept): those of
    the best trial's validation split and image size, and with `need_models` (an ensemble of the
    trial models themselves) only trials whose model file is kept."""
    pool = [k for k in kept if k.model is not None] if need_models else list(kept)
    if not pool:
        why = (
            "none of them has its weights kept (the best keep_models trials do; see `stl-tune status`)"
            if kept and need_models
            else "no completed trial kept its validation predictions (trials run before stl-tune kept them have none)"
        )
        raise StudyError(f"nothing to build an ensemble from: {why}")
    saved = [torch.load(k.predictions, map_location="cpu", weights_only=True) for k in pool]
    first = saved[0]
    same = [i for i, s in enumerate(saved) if all(s[k] == first[k] for k in ("split", "classes", "image_size"))]
    probs = torch.stack([saved[i]["probs"] for i in same])
    labels = first["labels"]
    counts = greedy_selection(probs, labels, max_members, rounds)
    weights = [c / sum(counts) for c in counts]
    members = sorted(((pool[i], w) for i, w in zip(same, weights) if w > 0), key=lambda m: -m[1])
    ensemble = (torch.stack([w * p for w, p in zip(weights, probs.double())])).sum(0)
    return Selection(
        members=members,
        val_acc=_score(ensemble, labels)[0],
        best_single_val_acc=max(_score(p.double(), labels)[0] for p in probs),
        candidates=len(same),
        other_split=len(pool) - len(same),
        without_model=len(kept) - len(pool),
        split=(
            f"{len(labels):,} validation images (seed {first['seed']}, val_fraction {first['val_fraction']}) "
            f"at {first['image_size']} px"
        ),
    )
