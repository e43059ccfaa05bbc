"""Ranking losses on identifier scores against hand-computed values."""

import math

import pytest
import torch

from rerank.training.losses.identifier_ranking import IdentifierRankingLoss


def test_ranknet_hand_computed():
    s = torch.tensor([[1.0, 0.0, 2.0]])
    r = torch.tensor([[1, 2, 3]])  # passage 0 best, then 1, then 2
    pairs = [((0, 1), 1 / 3), ((0, 2), 1 / 4), ((1, 2), 1 / 5)]
    num = sum(w * math.log1p(math.exp(s[0, j] - s[0, i])) for (i, j), w in pairs)
    want = num / sum(w for _, w in pairs)
    assert float(IdentifierRankingLoss("ranknet")(s, r)) == pytest.approx(want, rel=1e-6)
    plain = sum(math.log1p(math.exp(s[0, j] - s[0, i])) for (i, j), _ in pairs) / 3
    assert float(IdentifierRankingLoss("ranknet", weighted=False)(s, r)) == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("kind", ["ranknet", "listnet", "listmle"])
@pytest.mark.parametrize("weighted", [True, False])
def test_padding_changes_nothing_and_stays_finite(kind, weighted):
    """A short list padded (rank 0) into a batch with a longer one: same loss as alone, and a finite
    gradient (weighted RankNet once produced nan from 1/(0+0) * 0 on the padding pairs)."""
    loss = IdentifierRankingLoss(kind, weighted=weighted)
    long_s, long_r = torch.tensor([[0.3, -1.0, 2.0, 0.1]]), torch.tensor([[2, 4, 1, 3]])
    short_s, short_r = torch.tensor([[1.0, 0.0]]), torch.tensor([[2, 1]])
    s = torch.cat([long_s, torch.cat([short_s, torch.tensor([[-7.0, 5.0]])], 1)]).requires_grad_()
    r = torch.cat([long_r, torch.cat([short_r, torch.tensor([[0, 0]])], 1)])
    value = loss(s, r)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    assert float(s.grad[1, 2:].abs().sum()) == 0.0  # padding gets no gradient
    want = (float(loss(long_s, long_r)) + float(loss(short_s, short_r))) / 2
    assert float(value) == pytest.approx(want, rel=1e-6)


def test_listmle_hand_computed_and_padding_ignored():
    s = torch.tensor([[0.5, 2.0, -1.0, 9.0]])
    r = torch.tensor([[2, 1, 3, 0]])  # last is padding
    # order by rank: passages 1, 0, 2
    a, b, c = 2.0, 0.5, -1.0
    want = (
        -((a - math.log(math.exp(a) + math.exp(b) + math.exp(c))) + (b - math.log(math.exp(b) + math.exp(c))) + 0.0) / 3
    )
    assert float(IdentifierRankingLoss("listmle")(s, r)) == pytest.approx(want, rel=1e-6)


def test_listnet_hand_computed():
    s = torch.tensor([[0.0, 1.0]])
    r = torch.tensor([[1, 2]])
    g = [1.0, 1 / math.log2(3)]
    t = [math.exp(x / 0.5) for x in g]
    t = [x / sum(t) for x in t]
    logp = [0.0 - math.log(1 + math.e), 1.0 - math.log(1 + math.e)]
    want = -(t[0] * logp[0] + t[1] * logp[1])
    assert float(IdentifierRankingLoss("listnet", temperature=0.5)(s, r)) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("kind", ["ranknet", "listnet", "listmle"])
def test_gradient_pushes_toward_label(kind):
    s = torch.zeros(1, 4, requires_grad=True)
    IdentifierRankingLoss(kind)(s, torch.tensor([[4, 1, 3, 2]])).backward()
    assert s.grad[0, 1] < 0 < s.grad[0, 0]  # raise the best passage's score, lower the worst's


def test_bad_shapes_and_kind():
    with pytest.raises(ValueError, match="kind"):
        IdentifierRankingLoss("hinge")
    with pytest.raises(ValueError, match="batch, passages"):
        IdentifierRankingLoss()(torch.zeros(3), torch.ones(3, dtype=torch.long))
