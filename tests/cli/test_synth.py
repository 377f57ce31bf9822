"""`vkt synth textdet`: an ICDAR-style folder the training reader and `vkt eval` take as it is; bad options exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PIL")

from vkt.cli.main import main  # noqa: E402
from vkt.training import synth_text as st  # noqa: E402

if not st.fonts_for("latin"):
    pytest.skip("no Latin font for synthetic text: apt-get install fonts-dejavu-core", allow_module_level=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    assert main(["synth", "textdet", str(out), "--count", "3", "--langs", "latin", "--size", "96x128",
                 "--seed", "7", "--words", "2,3", "--text-height", "14,20"]) == 0
    return out


def test_writes_images_and_labels_the_training_reader_parses(folder):
    from vkt.runtime.image import read_image
    from vkt.training.textdet_data import IcdarFolder

    names = sorted(p.name for p in folder.iterdir())
    assert names == ["gt_synth_000000.txt", "gt_synth_000001.txt", "gt_synth_000002.txt", "synth.json",
                     "synth_000000.png", "synth_000001.png", "synth_000002.png"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]   # no temp folder left behind
    meta = json.loads((folder / "synth.json").read_text(encoding="utf-8"))
    assert meta["n"] == 3 and meta["seed"] == 7 and list(meta["fonts"]) == ["latin"]
    data = IcdarFolder(folder)
    cfg = st.SynthConfig(size=(96, 128), words=(2, 3), text_height=(14, 20), scripts=("latin",))
    assert len(data) == 3
    for i in range(3):
        want = st.render_synth(i, 7, cfg)   # the generator itself, image i of stream 7
        got = data[i]
        np.testing.assert_array_equal(read_image(folder / f"synth_{i:06d}.png"), want.image)
        assert got.image.shape == (96, 128, 3) and got.texts == want.texts and 2 <= len(got.texts) <= 3
        for p, q in zip(got.polygons, want.polygons):
            assert p.shape == (4, 2) and np.abs(p - q).max() <= 0.05 + 1e-4   # written to 0.1 px


def test_vkt_eval_reads_the_folder(folder, tmp_path, capsys):
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    bundle = ppocrv5_det_mobile_bundle(tmp_path / "det.vkt")
    capsys.readouterr()
    assert main(["eval", str(bundle), "--data", str(folder)]) == 0
    result = json.loads(capsys.readouterr().out)
    n_gt = sum(len(st.render_synth(i, 7, st.SynthConfig(size=(96, 128), words=(2, 3), text_height=(14, 20),
                                                         scripts=("latin",))).texts) for i in range(3))
    assert result["ground_truth"] == n_gt and 0.0 <= result["hmean"] <= 1.0
    # "precision" is the detection metric; which graph ran is "model_precision" (no look-alike "precision_mode")
    assert 0.0 <= result["precision"] <= 1.0 and result["model_precision"] == "fp32" and "precision_mode" not in result


def test_bad_options_exit_2(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["synth", "textdet", str(out), "--count", "2", "--langs", "latin,klingon"]) == 2
    err = capsys.readouterr().err
    assert "--langs: unknown script 'klingon'" in err and "'latin'" in err and not out.exists()
    assert main(["synth", "textdet", str(out), "--count", "0"]) == 2
    assert "--count must be a positive" in capsys.readouterr().err
    assert main(["synth", "textdet", str(out), "--size", "10x10"]) == 2
    assert "--size must be N or HxW" in capsys.readouterr().err
    out.mkdir()
    assert main(["synth", "textdet", str(out), "--count", "1", "--langs", "latin"]) == 2
    assert "already exists" in capsys.readouterr().err
