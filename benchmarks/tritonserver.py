"""A pinned, real Triton Inference Server on CPU for tests and benchmarks: the nvidia-pytriton wheel's ``tritonserver``.

    python benchmarks/tritonserver.py            # provision (downloads ~55 MB once), print where it is
    python benchmarks/tritonserver.py --check    # exit 0 when provisioned, 1 with the reason when not

The ``nvidia-pytriton`` wheel ships Triton's ``tritonserver`` binary (2.51), its libraries and the Python
backend, with one ``triton_python_backend_stub`` per Python version — no onnxruntime or TensorRT backend.
Installing the wheel would pull its dependencies (numpy<2 among them) into vkt's environment, so this
module fetches the pinned wheel alone (``pip download --no-deps``), checks its sha256 and unpacks it
into a cache folder (``$VKT_TRITON_HOME``, default ``~/.cache/vkt/tritonserver-0.7.0``):

    dist/pytriton/tritonserver/bin/tritonserver
    dist/pytriton/tritonserver/backends/python/   libtriton_python.so + this Python's stub, copied in
    dist/nvidia_pytriton.libs/                    the server's bundled shared libraries
    pyenv/                                        the Python the stub runs models in (see below)

The stub runs models in the Python found first on PATH. Its tensors go through numpy's C API as numpy
1.x lays them out: under numpy 2 a request's [1, 2, 3] arrives as [1, 1, 1] and outputs come back
empty, without an error. So models run in their own virtual environment ``pyenv/`` with the packages
of :data:`PYENV_PACKAGES` (numpy 1.26) and this process's onnxruntime version (the same numerics as
vkt here); vkt itself comes from PYTHONPATH. Nothing is installed into the calling environment.

:func:`start` runs the server on free loopback ports in explicit model-control mode and waits until the
models named are ready.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PYTRITON = "0.7.0"
WHEEL = f"nvidia_pytriton-{PYTRITON}-py3-none-manylinux_2_35_x86_64.whl"
WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
PYENV_PACKAGES = ("numpy==1.26.4", "opencv-python-headless==4.11.0.86", "pyclipper==1.4.0")
REPO_ROOT = Path(__file__).resolve().parents[1]


class Unavailable(RuntimeError):
    """The pinned Triton server cannot be provisioned or run here (the message says why)."""


def home() -> Path:
    return Path(os.environ.get("VKT_TRITON_HOME") or Path.home() / ".cache" / "vkt" / f"tritonserver-{PYTRITON}")


@dataclass(frozen=True)
class Dist:
    """Paths of a provisioned server."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / "dist" / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "dist" / "pytriton" / "tritonserver" / "backends"

    @property
    def libs(self) -> Path:
        return self.root / "dist" / "nvidia_pytriton.libs"

    @property
    def python_bin(self) -> Path:
        return self.root / "pyenv" / "bin"

    @property
    def marker(self) -> Path:
        return self.root / "READY.json"

    def env(self, pythonpath: Path = REPO_ROOT) -> dict[str, str]:
        """The server's environment: its libraries and this Python's libpython, pyenv first on PATH, vkt importable."""
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(self.libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = f"{self.python_bin}:{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(pythonpath)
        env.pop("VIRTUAL_ENV", None)
        return env


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise Unavailable(f"{what} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")


def _fetch_wheel(root: Path) -> Path:
    whl = root / "whl" / WHEEL
    if not whl.is_file():
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"nvidia-pytriton=={PYTRITON}",
              "-d", str(whl.parent)], f"pip download nvidia-pytriton=={PYTRITON}")
    if not whl.is_file():
        raise Unavailable(f"pip download did not write {WHEEL} (another platform's wheel?)")
    got = _sha256(whl)
    if got != WHEEL_SHA256:
        whl.unlink()
        raise Unavailable(f"{WHEEL} has sha256 {got}, expected {WHEEL_SHA256}; deleted it")
    return whl


def _unpack(whl: Path, dist: Dist) -> None:
    stub = dist.root / "dist" / "pytriton" / "tritonserver" / "python_backend_stubs"
    stub = stub / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
    if (dist.backends / "python" / "triton_python_backend_stub").is_file():
        return
    stage = Path(tempfile.mkdtemp(prefix="dist.", dir=dist.root))
    with zipfile.ZipFile(whl) as z:
        z.extractall(stage)
    staged_stub = stage / stub.relative_to(dist.root / "dist")
    if not staged_stub.is_file():
        shutil.rmtree(stage)
        raise Unavailable(f"nvidia-pytriton {PYTRITON} has no Python backend stub for Python "
                          f"{sys.version_info[0]}.{sys.version_info[1]} (it ships 3.8-3.13)")
    for exe in (stage / "pytriton" / "tritonserver" / "bin" / "tritonserver", staged_stub):
        exe.chmod(0o755)
    # the Python backend starts the stub found beside libtriton_python.so
    shutil.copy2(staged_stub, stage / "pytriton" / "tritonserver" / "backends" / "python" / "triton_python_backend_stub")
    shutil.rmtree(dist.root / "dist", ignore_errors=True)
    stage.rename(dist.root / "dist")


def _make_pyenv(dist: Dist) -> None:
    py = dist.python_bin / "python"
    ort = f"onnxruntime=={metadata.version('onnxruntime')}"
    want = [*PYENV_PACKAGES, ort]
    stamp = dist.root / "pyenv" / "vkt-packages.txt"
    if py.is_file() and stamp.is_file() and stamp.read_text().split() == want:
        return
    shutil.rmtree(dist.root / "pyenv", ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or sys.executable  # a venv's python makes a venv of its base
    _run([base, "-m", "venv", str(dist.root / "pyenv")], "python -m venv")
    _run([str(py), "-m", "pip", "install", "-q", *want], f"pip install {' '.join(want)} into {dist.root / 'pyenv'}")
    stamp.write_text("\n".join(want) + "\n")


def _check_links(dist: Dist) -> None:
    """Every shared library of the server and the stub resolves (ldd), else Unavailable naming the missing ones."""
    if shutil.which("ldd") is None:
        return
    for exe in (dist.server, dist.backends / "python" / "triton_python_backend_stub"):
        r = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, env=dist.env())
        missing = [ln.split()[0] for ln in r.stdout.splitlines() if "not found" in ln]
        if missing:
            raise Unavailable(f"{exe.name} needs {', '.join(missing)}, not found here")


def provision(root: Path | None = None) -> Dist:
    """Download (once), check and unpack the pinned server, and make its models' Python; returns its paths."""
    dist = Dist(root or home())
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise Unavailable(f"nvidia-pytriton {PYTRITON} ships tritonserver for Linux x86_64 only")
    dist.root.mkdir(parents=True, exist_ok=True)
    _unpack(_fetch_wheel(dist.root), dist)
    _make_pyenv(dist)
    _check_links(dist)
    dist.marker.write_text(json.dumps({"nvidia-pytriton": PYTRITON, "wheel_sha256": WHEEL_SHA256,
                                       "pyenv": (dist.root / "pyenv" / "vkt-packages.txt").read_text().split()}) + "\n")
    return dist


def find(root: Path | None = None) -> Dist:
    """The provisioned server, without downloading anything; Unavailable (with the command that provisions it) if none."""
    dist = Dist(root or home())
    if not dist.marker.is_file() or not dist.server.is_file():
        raise Unavailable(f"no Triton server provisioned in {dist.root}: run 'python benchmarks/tritonserver.py' "
                          f"(downloads nvidia-pytriton {PYTRITON}, ~55 MB, with pip --no-deps)")
    want = [*PYENV_PACKAGES, f"onnxruntime=={metadata.version('onnxruntime')}"]
    stamp = dist.root / "pyenv" / "vkt-packages.txt"
    if not stamp.is_file() or stamp.read_text().split() != want:
        raise Unavailable(f"the Triton server's Python in {dist.root / 'pyenv'} does not hold {want}: "
                          "run 'python benchmarks/tritonserver.py' again")
    return dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running tritonserver: its process, URLs (host:port, as tritonclient takes them) and log file."""

    proc: subprocess.Popen
    http: str
    grpc: str
    log: Path

    def stop(self) -> int:
        """SIGTERM, wait (Triton drains for up to --exit-timeout-secs), SIGKILL after 30 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start(dist: Dist, repo: Path, models: list[str], log: Path, timeout_s: float = 120.0,
          extra_args: tuple[str, ...] = ()) -> Server:
    """Start tritonserver on ``repo`` (explicit model control: ``models`` loaded at start) and wait until it is
    ready; Unavailable with the log's tail when it exits or does not become ready in ``timeout_s``."""
    http, grpc = free_port(), free_port()
    cmd = [str(dist.server), f"--model-repository={repo}", f"--backend-directory={dist.backends}",
           "--model-control-mode=explicit", *(f"--load-model={m}" for m in models),
           "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
           "--allow-metrics=false", "--exit-timeout-secs=10", *extra_args]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dist.env())  # Ctrl-C reaches it too
    server = Server(proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"tritonserver exited {proc.returncode} while starting:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise Unavailable(f"tritonserver was not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only say whether it is provisioned (exit 1 when not)")
    ap.add_argument("--home", type=Path, default=None, help="cache folder (default: $VKT_TRITON_HOME or ~/.cache/vkt/...)")
    args = ap.parse_args(argv)
    try:
        dist = find(args.home) if args.check else provision(args.home)
    except Unavailable as e:
        print(f"tritonserver unavailable: {e}", file=sys.stderr)
        return 1
    print(f"tritonserver {PYTRITON} (nvidia-pytriton, sha256 checked): {dist.server}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
