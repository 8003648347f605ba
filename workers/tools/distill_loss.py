"""The loss of a label-aware `rankstream distill --labels` run (torch; imported only by the
training step): the teacher's scores and the split's judgements, on each query's list.

A training row is one query and `n` documents: its judged positives first, then retrieved
candidates judged not relevant (hard negatives); its label is `[teacher logits, relevance]`
(two rows of `n`: the teacher's raw score of each document, 1.0 for a judged positive and 0.0
for a negative). Per list of student logits `s` and teacher logits `t`:

    loss = distill(s, t) + label_weight * labels(s, relevance)

- `distill`, `mse`: mean squared error of every logit to the teacher's;
  `margin-mse`: of every difference to the teacher-best document of the list,
  `(s_i - s_best) - (t_i - t_best)`, over the list's other documents (Hofstaetter et al.).
- `labels`: each judged positive's softmax cross-entropy against the list's negatives (the
  localized contrastive estimation of Gao et al. 2021, one positive at a time so that two
  relevant documents never compete): `-log(e^s_p / (e^s_p + sum_negatives e^s_n))`, which is
  `softplus(logsumexp(s_negatives) - s_p)`, averaged over the batch's positives.

The trainer logs the two terms apart (`distill`, `labels`).
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn

from rankstream.workers.tools.distill import MARGIN_MSE, MSE


class LabelledDistillLoss(nn.Module):
    """`distill + label_weight * labels` over lists of one query and `n` documents; see the
    module docstring.

    Args:
        model: the sentence-transformers `CrossEncoder` being trained (one output logit).
        distill: the teacher term, `mse` or `margin-mse`.
        label_weight: the weight of the label term (0 = the teacher term alone).
    """

    def __init__(self, model: Any, distill: str = MSE, label_weight: float = 1.0) -> None:
        super().__init__()
        if distill not in (MSE, MARGIN_MSE):
            raise ValueError(f"unknown teacher term {distill!r}: {MSE} or {MARGIN_MSE}")
        self.model = model
        self.distill = distill
        self.label_weight = label_weight

    def forward(
        self,
        inputs: list[list[str]],
        labels: Tensor | list[Tensor],
        prompt: str | None = None,
        task: str | None = None,
    ) -> dict[str, Tensor]:
        queries, columns = inputs[0], inputs[1:]
        targets = torch.stack(labels) if isinstance(labels, list) else labels
        if targets.shape != (len(queries), 2, len(columns)):
            raise ValueError(
                f"labels of shape {tuple(targets.shape)}: expected (rows, 2, documents) = "
                f"{(len(queries), 2, len(columns))}"
            )
        teacher = targets[:, 0, :].float().to(self.model.device)
        relevant = targets[:, 1, :].to(self.model.device) > 0
        pairs = [(query, column[row]) for column in columns for row, query in enumerate(queries)]
        features = self.model.preprocess(pairs, prompt=prompt, task=task)
        features = batch_to_device(features, self.model.device)
        scores = self.model(features)["scores"].view(len(columns), len(queries)).T
        return {
            "distill": teacher_term(scores, teacher, self.distill),
            "labels": self.label_weight * label_term(scores, relevant),
        }

    def get_config_dict(self) -> dict[str, Any]:
        return {"distill": self.distill, "label_weight": self.label_weight}


def teacher_term(scores: Tensor, teacher: Tensor, distill: str) -> Tensor:
    """The student's distance to the teacher on lists of logits (rows × documents)."""
    if distill == MSE:
        return nn.functional.mse_loss(scores, teacher)
    best = teacher.argmax(dim=1, keepdim=True)
    ours = scores - scores.gather(1, best)
    theirs = teacher - teacher.gather(1, best)
    others = torch.ones_like(scores, dtype=torch.bool).scatter(1, best, False)
    return ((ours - theirs)[others] ** 2).mean()


def label_term(scores: Tensor, relevant: Tensor) -> Tensor:
    """Each judged positive's cross-entropy against its list's negatives, averaged over the
    positives (rows × documents; every row needs a positive and a negative)."""
    negatives = torch.logsumexp(scores.masked_fill(relevant, float("-inf")), dim=1, keepdim=True)
    per_positive = nn.functional.softplus(negatives - scores)
    return per_positive[relevant].mean()
