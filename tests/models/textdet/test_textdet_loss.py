"""DB loss: OHEM selection, the three terms against hand-computed values, and a few optimisation steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vkt.errors import InputError, ShapeError  # noqa: E402
from vkt.models.textdet import loss as dbl  # noqa: E402
from vkt.models.textdet.labels import make_db_labels  # noqa: E402


def test_ohem_keeps_all_positives_and_three_hardest_negatives_each():
    # 2 positives, 10 negatives with losses 0.0 .. 0.9, one masked-out pixel with the largest loss.
    loss = torch.tensor([[5.0, 5.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 9.0]])
    gt = torch.tensor([[1.0, 1.0] + [0.0] * 11])
    mask = torch.tensor([[1.0] * 12 + [0.0]])
    sel = dbl.ohem_select(loss, gt, mask, neg_ratio=3.0)
    assert (sel.n_pos, sel.n_neg) == (2, 6)
    assert sel.positive[0].tolist() == [True, True] + [False] * 11
    assert torch.nonzero(sel.negative[0]).flatten().tolist() == [6, 7, 8, 9, 10, 11]  # losses 0.4 .. 0.9
    # fewer negatives than 3 x positives: all of them
    sel = dbl.ohem_select(loss[:, :5], gt[:, :5], mask[:, :5])
    assert (sel.n_pos, sel.n_neg) == (2, 3)


def test_balanced_bce_hand_computed():
    pred = torch.tensor([[0.9, 0.2, 0.6, 0.1, 0.3]])
    gt = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.ones(1, 5)
    # 1 positive -> 3 negatives: the hardest are 0.6, 0.3, 0.2 (BCE -log(1 - p))
    want = (-math.log(0.9) - math.log(0.4) - math.log(0.7) - math.log(0.8)) / 4
    assert dbl.balanced_bce(pred, gt, mask).item() == pytest.approx(want, rel=1e-5)


def test_l1_and_dice_hand_computed():
    pred = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    gt = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert dbl.masked_l1(pred, gt, mask).item() == pytest.approx(0.5 / 3, rel=1e-5)
    # inter = 1.5, |P| = 1.5, |G| = 2 -> 1 - 3 / 3.5
    assert dbl.dice_loss(pred, gt, mask).item() == pytest.approx(1 - 3 / 3.5, rel=1e-5)


def _tiny_batch():
    rect = np.array([[6, 10], [26, 10], [26, 22], [6, 22]], np.float64)
    lab = make_db_labels([rect], (32, 32))
    img = np.zeros((1, 3, 32, 32), np.float32)
    img[:, :, 10:23, 6:27] = 1.0  # the "text" is a bright box
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731  [1, H, W]
    return torch.from_numpy(img), t(lab.shrink_map), t(lab.shrink_mask), t(lab.threshold_map), t(lab.threshold_mask)


def test_db_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    x, shrink, shrink_mask, thresh, thresh_mask = _tiny_batch()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))
    criterion = dbl.DBLoss()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    history = []
    for _ in range(15):
        maps = torch.sigmoid(net(x))  # [1, 2, H, W]: shrink probability, threshold
        out = criterion(maps[:, :1], shrink, shrink_mask, maps[:, 1:], thresh, thresh_mask)
        assert set(out) == {"loss", "loss_shrink", "loss_threshold", "loss_binary"}
        assert all(torch.isfinite(v) for v in out.values())
        want = 5 * out["loss_shrink"] + 10 * out["loss_threshold"] + out["loss_binary"]
        assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
        history.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert history[-1] < 0.7 * history[0], history


def test_db_loss_shrink_only_and_input_errors():
    x, shrink, shrink_mask, thresh, thresh_mask = _tiny_batch()
    pred = torch.full_like(shrink, 0.5)[:, None]  # [B, 1, H, W] is accepted too
    out = dbl.DBLoss()(pred, shrink, shrink_mask)
    assert set(out) == {"loss", "loss_shrink"} and out["loss"].item() == pytest.approx(5 * math.log(2), rel=1e-5)
    with pytest.raises(ShapeError, match="shrink_map has shape"):
        dbl.DBLoss()(pred, shrink[:, :16], shrink_mask)
    with pytest.raises(InputError, match="missing \\['threshold_mask'\\]"):
        dbl.DBLoss()(pred, shrink, shrink_mask, pred, thresh)
    with pytest.raises(InputError, match="alpha must be a number >= 0, got -1"):
        dbl.DBLoss(alpha=-1)
    with pytest.raises(ShapeError, match="floating-point"):
        dbl.DBLoss()(pred, shrink.long(), shrink_mask)
