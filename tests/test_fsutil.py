"""vkt.fsutil and the bundle writers: atomic, all-or-nothing, and files/folders follow the umask like mkdir/open."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vkt.bundle import Bundle, BundleWriter, edit_bundle
from vkt.errors import BundleError
from vkt.fsutil import atomic_write_text, current_umask, staged_dir


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, hidden files included."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def _plain(tmp: Path, umask: int) -> tuple[int, int]:
    """What open() and mkdir give a new file and folder under this umask: the reference every writer must match."""
    d = tmp / "plain-dir"
    d.mkdir()
    f = tmp / "plain-file"
    f.write_bytes(b"")
    modes = stat.S_IMODE(f.stat().st_mode), stat.S_IMODE(d.stat().st_mode)
    f.unlink()
    d.rmdir()
    return modes


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still set


def test_atomic_file_follows_the_umask(tmp_path, umask):
    fmode, _ = _plain(tmp_path, umask)
    atomic_write_text(tmp_path / "a" / "b.json", "{}\n")
    atomic_write_text(tmp_path / "a" / "b.json", "{}\n")  # replacing keeps following it
    assert stat.S_IMODE((tmp_path / "a" / "b.json").stat().st_mode) == fmode == 0o666 & ~umask
    assert os.listdir(tmp_path / "a") == ["b.json"]


def test_bundle_files_and_folder_follow_the_umask(tmp_path, toy_model, umask):
    fmode, dmode = _plain(tmp_path, umask)
    dest = tmp_path / "b.vkt"
    with BundleWriter(dest, family="generic", task="tensor") as w:
        w.add_component("model", toy_model[1])
        w.add_file(toy_model[0].SerializeToString(), "model.onnx", role="fp32 onnx")
        w.add_file(b"{}", "sub/report.json", role="report")
    modes = _modes(dest)
    assert modes == {".": dmode, "manifest.json": fmode, "model.onnx": fmode, "sub": dmode, "sub/report.json": fmode}
    b = Bundle.load(dest)
    b.add_file(b"plan", "model.plan", role="plan")
    assert _modes(dest)["model.plan"] == fmode and _modes(dest)["manifest.json"] == fmode


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(dest) as stage:
            stage.mkdir()
            (stage / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(dest) == ["old.txt"]
    with staged_dir(dest) as stage:
        assert stage.name == "out" and stage.parent.name.startswith(".out.tmp-")  # the final name while staged
        stage.mkdir()
        (stage / "new.txt").write_text("new")
        assert os.listdir(dest) == ["old.txt"]  # not visible until the block ends
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(dest) == ["new.txt"]


def _in_fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter: the tests below send SIGINT to their own process, which must not be one
    where earlier tests left native thread pools (torch, OpenVINO) running; in the long pytest process, after the
    OpenVINO SD parity test, such a SIGINT crashed it (SIGSEGV) before Python's handler ran."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_replace_dir_is_not_cut_between_its_renames(tmp_path):
    """A SIGINT arriving between the two renames is acted on after them: dest is never missing."""
    _in_fresh_python(f"""
        import os, signal
        from pathlib import Path
        from vkt.fsutil import replace_dir

        tmp = Path({str(tmp_path)!r})
        src, dest = tmp / "new", tmp / "dest"
        src.mkdir()
        (src / "f").write_text("new")
        dest.mkdir()
        (dest / "f").write_text("old")
        real_replace, seen = os.replace, []

        def replace(a, b):  # the signal lands right after the old folder was moved aside
            real_replace(a, b)
            if not seen:
                seen.append(a)
                os.kill(os.getpid(), signal.SIGINT)

        os.replace = replace
        try:
            replace_dir(src, dest)
            raise SystemExit("no KeyboardInterrupt")
        except KeyboardInterrupt:
            pass
        os.replace = real_replace
        assert seen and (dest / "f").read_text() == "new" and sorted(os.listdir(tmp)) == ["dest"]
    """)


def test_signals_held_delivers_after_the_block():
    _in_fresh_python("""
        import os, signal
        from vkt.fsutil import signals_held

        done = []
        try:
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("rest of the block ran")
            raise SystemExit("no KeyboardInterrupt")
        except KeyboardInterrupt:
            pass
        assert done == ["rest of the block ran"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    """)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_edit_bundle_is_all_or_nothing(toy_bundle):
    before = _snapshot(toy_bundle)
    with pytest.raises(KeyboardInterrupt):
        with edit_bundle(toy_bundle) as b:
            b.add_file(b"table", "model.calib.json", role="calibration table")
            # a file replaced in the copy: the original is hard-linked to it and must not change
            b.add_file(b"not the model", "model.onnx", role="fp32 onnx")
            raise KeyboardInterrupt
    assert _snapshot(toy_bundle) == before
    assert sorted(os.listdir(toy_bundle.parent)) == [toy_bundle.name]
    Bundle.load(toy_bundle)
    with edit_bundle(toy_bundle) as b:
        b.add_file(b"plan", "model.plan", role="plan")
        assert b.root != toy_bundle and b.root.name == toy_bundle.name
    after = Bundle.load(toy_bundle)
    assert after.path("plan").read_bytes() == b"plan" and after.path("fp32 onnx").read_bytes() == before["model.onnx"]
    assert sorted(os.listdir(toy_bundle.parent)) == [toy_bundle.name]


def test_edit_bundle_refuses_a_tampered_bundle(toy_bundle):
    (toy_bundle / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="bytes"):
        with edit_bundle(toy_bundle):
            pass


@pytest.mark.torch
def test_lightning_checkpoints_follow_the_umask_and_load(tmp_path, umask):
    """DETR training's last.ckpt: Lightning's own writer stages it with mkstemp (0600) in the system temp folder."""
    pytest.importorskip("lightning")
    import torch

    from vkt.training.checkpoint import atomic_checkpoint_io

    fmode, _ = _plain(tmp_path, umask)
    io = atomic_checkpoint_io()
    path = tmp_path / "checkpoints" / "last.ckpt"
    state = {"epoch": 3, "state_dict": {"w": torch.arange(4.0)}}
    io.save_checkpoint(state, path)
    io.save_checkpoint({**state, "epoch": 4}, path)
    assert stat.S_IMODE(path.stat().st_mode) == fmode and os.listdir(path.parent) == ["last.ckpt"]
    back = io.load_checkpoint(path)
    assert back["epoch"] == 4 and torch.equal(back["state_dict"]["w"], state["state_dict"]["w"])
