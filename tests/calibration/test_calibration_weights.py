"""GPTQ weight rounding: hand-computed updates, lower output error than round-to-nearest, and codes the placements reproduce."""

from __future__ import annotations

import numpy as np
import pytest
from calib_helpers import feeds

from vkt.calibration.weights import gptq_round, round_conv_weights
from vkt.errors import CalibrationError


def _rtn(w: np.ndarray) -> np.ndarray:
    s = np.abs(w).max(axis=-1, keepdims=True) / 127
    return np.clip(np.rint(w / s), -127, 127)


def test_uncorrelated_inputs_give_round_to_nearest():
    # With a diagonal H no column's error can be compensated by another: GPTQ is plain rounding.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 5))
    h = np.stack([np.diag(rng.uniform(0.5, 4, 5)) for _ in range(2)])
    np.testing.assert_array_equal(gptq_round(w, h, damp=0.0), _rtn(w))


def test_two_column_update_matches_hand_computation():
    # Minimising (e1 x1 + e2 x2)^2 with e1 = w1 - q1 fixed moves w2 by e1 * h12 / h22 before it is rounded.
    w = np.array([[[0.3, 1.27]]])          # scale = 1.27 / 127 = 0.01; w2 is the pinned max
    h = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    q = gptq_round(w, h, damp=0.0)
    np.testing.assert_array_equal(q, [[[30, 127]]])
    w = np.array([[[1.27, 0.3054, 0.2]]])  # col 0 pinned (127); col 1: 30.54 -> 31, error -0.0046
    h = np.array([[[1.0, 0.0, 0.0], [0.0, 2.0, 1.5], [0.0, 1.5, 2.0]]])
    q = gptq_round(w, h, damp=0.0)
    e1 = 0.3054 - 31 * 0.01
    w2 = 0.2 + e1 * 1.5 / 2.0               # 0.19655 -> 19.655 -> 20 (plain rounding of 0.2 also gives 20)
    assert q[0, 0, 1] == 31 and q[0, 0, 2] == int(np.rint(w2 / 0.01))
    w = np.array([[[1.27, 0.3049, 0.2050]]])  # now the compensation flips the last code: 20.5 - 0.4 -> 20 vs 21
    q = gptq_round(w, h, damp=0.0)
    e1 = 0.3049 - 30 * 0.01
    assert q[0, 0, 1] == 30 and q[0, 0, 2] == int(np.rint((0.2050 + e1 * 1.5 / 2.0) / 0.01)) == 21


def test_gptq_beats_round_to_nearest_on_imbalanced_inputs():
    # Correlated inputs (6 latent factors) whose scales differ by 100x, weights scaled inversely (what
    # folded BN leaves behind): the output error ||(W - Q) X|| is what GPTQ minimises. Measured on
    # seeds 0-2: 0.74-0.87 of round-to-nearest's error; the bound fails a GPTQ that ignores H.
    rng = np.random.default_rng(0)
    k, r, p = 24, 16, 4000
    z = rng.standard_normal((6, p))
    x = rng.standard_normal((k, 6)) @ z + 0.05 * rng.standard_normal((k, p))
    x *= np.geomspace(0.05, 5, k)[:, None]
    w = rng.standard_normal((1, r, k)) / np.geomspace(0.05, 5, k)
    h = (x @ x.T)[None]
    s = np.abs(w).max(axis=-1, keepdims=True) / 127
    err_rtn = np.linalg.norm((w[0] - _rtn(w)[0] * s[0]) @ x)
    err_gptq = np.linalg.norm((w[0] - gptq_round(w, h)[0] * s[0]) @ x)
    assert err_gptq < 0.8 * err_rtn
    assert np.abs(gptq_round(w, h)).max(axis=-1).min() == 127  # every row keeps its max at 127


def test_gptq_round_rejects_mismatched_shapes():
    with pytest.raises(CalibrationError, match=r"w \[G, R, K\]"):
        gptq_round(np.zeros((2, 3)), np.zeros((2, 3, 3)))


def test_rounded_weights_are_reproduced_by_the_placements():
    from onnx import numpy_helper

    from vkt.calibration import compute_ranges, place_ort, place_trt
    from vkt.export.toy import toy_convnet
    from vkt.onnxgraph import prepare_model

    model, _ = toy_convnet()
    data = feeds()
    prepared = prepare_model(model)
    rounded, rep = round_conv_weights(prepared, data, show_progress=False)
    assert rep["convs"] == sum(1 for n in prepared.graph.node if n.op_type == "Conv") > 0
    table = compute_ranges(rounded, data, show_progress=False)
    float_w = {i.name: numpy_helper.to_array(i) for i in rounded.graph.initializer}
    convs = [n for n in rounded.graph.node if n.op_type == "Conv"]
    for q in (place_ort(rounded, table), place_trt(rounded, table)):
        inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
        for n in convs:
            w = float_w[n.input[1]]
            codes, scale = inits[f"{n.input[1]}_quantized"], inits[f"{n.input[1]}_scale"]
            np.testing.assert_allclose(codes.astype(np.float32) * scale.reshape(-1, 1, 1, 1), w, rtol=1e-6, atol=0)
