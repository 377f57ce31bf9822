"""What `vkt quickstart` will do, as data: its photos, folders and options (``Plan``) and the shell commands it
prints for each step (:func:`commands`), built from the plan alone so tests can re-run them."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# scikit-image's bundled photos. Calibration: photos without text. Held out (never calibrated on): its
# two images of text, plus synthetic text pages when a font is installed.
CALIB_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "logo.png",
                "motorcycle_left.png", "rocket.jpg")
HELD_OUT_PHOTOS = ("page.png", "text.png")
LEGACY_CALIB = ("text.png",)  # calibrated on by quickstarts before held-out agreement: removed from an old calib/
SYNTH = {"count": 6, "size": 640, "words": (4, 10), "langs": "latin", "seed": 0}  # the held-out synthetic pages
BENCH_WARMUP = 2
INT8_STEP = "3. INT8 calibration and accuracy gate"


def skimage_photo(name: str) -> Path:
    """Path of one of scikit-image's bundled photos (read from package metadata: skimage is not imported)."""
    from vkt.errors import ModelError

    try:
        dist = metadata.distribution("scikit-image")
    except metadata.PackageNotFoundError:
        raise ModelError("the quickstart photos ship in scikit-image: pip install 'vkt[models]'") from None
    p = Path(str(dist.locate_file(f"skimage/data/{name}")))
    if not p.is_file():
        raise ModelError(f"scikit-image {dist.version} has no skimage/data/{name}")
    return p


@dataclass(frozen=True)
class Plan:
    """What the quickstart runs: its output folder and options. The printed commands are built from it alone.

    synth: how the held-out synthetic pages get a font: "system" (installed fonts), a folder for
    ``$VKT_FONT_DIRS`` (matplotlib's DejaVu), or "" (no font: page.png and text.png only).
    """

    out: Path
    onnx: Path
    method: str = "percentile"
    iters: int = 20
    threads: int | None = None
    int8: bool = True
    build: bool = False
    synth: str = "system"

    @property
    def bundle(self) -> Path:
        return self.out / "ppocrv5-det.vkt"

    @property
    def calib(self) -> Path:
        return self.out / "calib"

    @property
    def holdout(self) -> Path:
        return self.out / "holdout"

    @property
    def precisions(self) -> list[str]:
        return ["fp32", "int8"] if self.int8 else ["fp32"]

    @property
    def backends(self) -> list[str]:
        """The CPU backends benched: onnxruntime, and OpenVINO when it is installed (pip install 'vkt[openvino]')."""
        from importlib.util import find_spec

        return ["ort", "ov"] if find_spec("openvino") is not None else ["ort"]

    @property
    def targets(self) -> list[tuple[str, str]]:
        """(backend, precision) pairs benched, onnxruntime's first."""
        return [(b, p) for b in self.backends for p in self.precisions]

    def held_out_images(self) -> list[Path]:
        """The held-out images, in the order ``vkt run`` lists them (sorted file names)."""
        names = [*HELD_OUT_PHOTOS, *(f"synth_{i:06d}.png" for i in range(SYNTH["count"] if self.synth else 0))]
        return [self.holdout / n for n in sorted(names)]


def label(backend: str, precision: str) -> str:
    """The output folder of one target's detections: "fp32", "int8" (onnxruntime), "ov-fp32", "ov-int8"."""
    return precision if backend == "ort" else f"{backend}-{precision}"


def commands(plan: Plan, bench_hw: tuple[int, int], targets: list[tuple[str, str]] | None = None) -> dict[str, list[list[str]]]:
    """Step title -> shell commands (argv lists) that redo what the quickstart does in that step.

    ``bench_hw``: the (height, width) page.png is resized to, the input shape timed in the benchmark.
    ``targets``: the (backend, precision) pairs run and benched (default ``plan.targets``; after the accuracy gate,
    the INT8 targets it shipped).
    """
    targets = plan.targets if targets is None else targets
    b, threads = str(plan.bundle), (["--threads", str(plan.threads)] if plan.threads else [])
    photos = [str(skimage_photo(n)) for n in HELD_OUT_PHOTOS]
    held: list[list[str]] = [["mkdir", "-p", str(plan.holdout)]]
    if plan.synth:
        s = SYNTH
        synth = ["vkt", "synth", "textdet", str(plan.holdout), "--count", str(s["count"]), "--size", str(s["size"]),
                 "--words", ",".join(map(str, s["words"])), "--langs", s["langs"], "--seed", str(s["seed"]), "--overwrite"]
        held = [synth if plan.synth == "system" else ["env", f"VKT_FONT_DIRS={plan.synth}", *synth]]
    steps = {
        "1. export": [["vkt", "export", "onnx", str(plan.onnx), "--task", "textdet", "-o", b, "--force"]],
        "2. held-out text images": [*held, ["cp", *photos, str(plan.holdout)]],
    }
    if plan.int8:
        steps[INT8_STEP] = [["mkdir", "-p", str(plan.calib)],
                            ["cp", *(str(skimage_photo(n)) for n in CALIB_PHOTOS), str(plan.calib)],
                            ["vkt", "quantize", b, "--calib", str(plan.calib), "--method", plan.method,
                             "--holdout", str(plan.holdout)]]
    images = [str(p) for p in plan.held_out_images()]
    steps["4. detect"] = [["vkt", "run", b, *images, "-o", str(plan.out / label(be, p)), *(["--backend", be] if be != "ort" else []),
                           *(["--precision", p] if p != "fp32" else []), *threads] for be, p in targets]
    steps["5. bench"] = [["vkt", "bench", b, *(x for be, p in targets for x in ("-t", f"{be}:{p}")),
                          "--shape", f"height={bench_hw[0]},width={bench_hw[1]}", "--iters", str(plan.iters),
                          "--warmup", str(BENCH_WARMUP), *threads, "--plot", str(plan.out / "bench.png")]]
    if plan.build:
        steps["6. engines"] = [["vkt", "build", b, "--module", "tensorrt_rtx", *(["--precision", p] if p != "fp32" else [])]
                               for p in dict.fromkeys(p for be, p in targets if be == "ort")]
    return steps
