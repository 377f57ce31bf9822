"""Synthetic text: labels lie on the rendered text, determinism, ICDAR folder output, missing fonts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("PIL")

from vkt.errors import InputError  # noqa: E402
from vkt.training import synth_text as st  # noqa: E402
from vkt.training.textdet_data import IcdarFolder  # noqa: E402

if not any(st.fonts_for(s) for s in st.SCRIPTS):
    pytest.skip("no font for synthetic text: apt-get install fonts-dejavu-core", allow_module_level=True)

CFG = st.SynthConfig(size=(96, 128), text_height=(12, 26), words=(2, 4))


def _changed_inside(s: st.SynthSample) -> tuple[float, list[float]]:
    """Share of changed pixels that lie inside the labels, and per label the share of its area that changed."""
    h, w = s.image.shape[:2]
    changed = np.abs(s.image.astype(np.int16) - s.background.astype(np.int16)).max(-1) > 24
    union = np.zeros((h, w), np.uint8)
    per = []
    for p in s.polygons:
        one = np.zeros((h, w), np.uint8)
        cv2.fillPoly(one, [np.round(p).astype(np.int32)], 1)
        one = cv2.dilate(one, np.ones((3, 3), np.uint8))  # the warped ink's antialiased rim
        per.append(float(changed[one > 0].mean()))
        union |= one
    return float(changed[union > 0].sum() / max(changed.sum(), 1)), per


def test_labels_fall_on_the_rendered_text():
    fonts = st.resolve_scripts(CFG.scripts)
    n_words = 0
    for i in range(6):
        s = st.render_synth(i, seed=3, config=CFG, fonts=fonts)
        assert s.image.shape == (96, 128, 3) and s.image.dtype == np.uint8
        assert len(s.polygons) == len(s.texts) == len(s.scripts)
        inside, per = _changed_inside(s)
        assert inside >= 0.98, (i, inside)                       # nothing drawn outside the labels
        assert all(v >= 0.08 for v in per), (i, per, s.texts)     # every label covers ink
        for p in s.polygons:
            assert p.shape == (4, 2) and (p >= 0).all() and (p[:, 0] <= 128).all() and (p[:, 1] <= 96).all()
        n_words += len(s.polygons)
    assert n_words >= 8


def test_deterministic_per_seed_and_index():
    a, b = st.render_synth(4, seed=7, config=CFG), st.render_synth(4, seed=7, config=CFG)
    assert np.array_equal(a.image, b.image) and a.texts == b.texts
    assert all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons))
    assert not np.array_equal(a.image, st.render_synth(4, seed=8, config=CFG).image)


@pytest.mark.parametrize("script", sorted(st.SCRIPTS))
def test_each_installed_script_renders(script):
    if not st.fonts_for(script):
        pytest.skip(f"no font for {script}: apt-get install {st.SCRIPTS[script].package}")
    cfg = st.SynthConfig(size=(96, 160), text_height=(16, 24), words=(2, 2), scripts=(script,))
    s = st.render_synth(0, seed=1, config=cfg)
    assert s.polygons and set(s.scripts) == {script}
    inside, per = _changed_inside(s)
    assert inside >= 0.98 and min(per) >= 0.08


def test_writes_an_icdar_folder_atomically(tmp_path):
    from vkt.eval.textdet import load_icdar_dir

    out = st.write_synth_dataset(tmp_path / "synth", 3, seed=2, config=CFG, show_progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["gt_synth_000000.txt", "gt_synth_000001.txt", "gt_synth_000002.txt", "synth.json",
                     "synth_000000.png", "synth_000001.png", "synth_000002.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]            # no temp folder left behind
    folder = IcdarFolder(out)
    ref = st.render_synth(1, seed=2, config=CFG)
    got = folder[1]
    assert np.array_equal(got.image, ref.image) and got.texts == ref.texts
    np.testing.assert_allclose(np.stack(got.polygons), np.stack(ref.polygons), atol=0.051)
    assert len(load_icdar_dir(out)) == 3                                # `vkt eval` reads it too
    with pytest.raises(InputError, match="already exists"):
        st.write_synth_dataset(out, 1, config=CFG)


def test_missing_fonts_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(st, "FONT_DIRS", ())
    monkeypatch.setenv("VKT_FONT_DIRS", str(tmp_path))
    with pytest.raises(InputError, match="fonts-noto-cjk"):
        st.resolve_scripts("cjk")
    with pytest.raises(InputError, match="fonts-dejavu-core"):
        st.resolve_scripts("auto")
    with pytest.raises(InputError, match="unknown script 'klingon'"):
        st.resolve_scripts("latin,klingon")
    with pytest.raises(InputError, match="at least 32"):
        st.SynthConfig(size=(16, 16))
