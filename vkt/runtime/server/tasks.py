"""Task endpoints beside the KServe v2 routes: an image in, text polygons or objects out; a prompt in, a PNG out.

Endpoints (registered by :func:`add_task_routes` for the bundles that have a task)::

    POST /v2/models/<m>/detect     body: the image file's bytes (PNG, JPEG, BMP, TIFF, WebP, PPM/PGM; others 415),
                                   Content-Type image/* or application/octet-stream
        text-detection   -> {"model_name", "model_version", "task", "image_size": {height, width},
                             "input_size": {height, width},
                             "detections": [{"polygon": [[x, y] x K], "score"}]}   source pixels
        object-detection -> ... "detections": [{"box": [x1, y1, x2, y2], "score", "label", "name"}]
    POST /v2/models/<sd>/generate  body: JSON {"prompt": str, "negative_prompt": str, "steps": int,
                                   "guidance_scale": float, "seed": int, "height": int, "width": int}
                                   (only "prompt" required) -> image/png (RGB); header X-Vkt-Seed

Numbers in ``detections`` are written as ``Detections.to_dict()`` writes them (coordinates to
0.01 px, scores to 1e-5), so the server's answer equals the in-process pipeline's ``to_dict()``.

How a request runs: the image is decoded and pre-processed in the connection's thread (OpenCV
releases the GIL), the tensor goes through the model's DynamicBatcher like any /infer request
(same queue, 503 when full, deadline, batching with other requests of the same shape), and the
post-processing runs back in the connection's thread. /generate runs Txt2Img with its three
components' calls routed through their batchers; one generation runs at a time per SD bundle (the
scheduler keeps per-generation state), ``max_waiting`` more may wait, the next gets 503.

Limits: the body limit of the server (413); images above ``max_image_pixels`` (413, judged from
the file header before decoding, for every accepted format — image_body.py — so a small file
cannot expand into gigabytes); concurrent decodes within the server's memory budget; admission by
expected wait (503 at once when the model cannot answer within the deadline);
``steps`` up to ``max_steps``; sizes and batch within the bundle's profiles (400).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vkt.errors import InputError
from vkt.log import get_logger
from vkt.runtime.base import Runner
from vkt.runtime.image import Preprocessor, resized_size
from vkt.runtime.server.errors import DeadlineError, NotFoundError, RequestError, UnavailableError
from vkt.runtime.server.image_body import check_image, check_image_content_type, decode_image
from vkt.runtime.server.protocol import loads
from vkt.runtime.server.transport import Request, Response, clip, json_response

log = get_logger(__name__)
Infer = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TaskLimits:
    """Per-request limits of the task endpoints.

    Args:
        max_image_pixels: largest decoded image (height x width); 413 above it.
        max_steps: most denoising steps a /generate request may ask for.
        max_waiting: /generate requests that may wait for the one running (per SD bundle); 503 beyond.
        max_json_bytes: largest /generate body (a prompt is short; 413 above it).
    """

    max_image_pixels: int = 40_000_000
    max_steps: int = 100
    max_waiting: int = 4
    max_json_bytes: int = 64 << 10


# ---- per-task pipelines (one image per request) -----------------------------------------------------
class TextDetectTask:
    """The TextDetector's stages for one image, with the model call injected (the server's batcher)."""

    task = "text-detection"

    def __init__(self, preprocess: Mapping[str, Any], postprocess: Mapping[str, Any], spec: Any):
        from vkt.runtime.textdet import DBParams

        self.params = DBParams.from_dict(postprocess)
        self.input_name = preprocess.get("input") or spec.input_names[0]
        self.output_name = spec.output_names[0]
        # As TextDetector.activate: the profile's max height/width caps the resize.
        profile = spec.profiles[0].axes if spec.profiles else {}
        dims = spec.input(self.input_name).shape
        caps = [profile[d][2] for d in dims[2:] if isinstance(d, str) and d in profile]
        self.pre = Preprocessor(preprocess, max_side=min(caps) if caps else None)

    def __call__(self, img: np.ndarray, infer: Infer) -> dict[str, Any]:
        """JSON-ready detections of one BGR uint8 image; ``infer(feed) -> outputs`` runs the model."""
        return self.detections(img, infer).to_dict()

    def cost(self, height: int, width: int) -> int:
        """Elements of the model input for an image of this size (admission control weighs requests by it)."""
        h, w = resized_size(height, width, self.pre.resize, self.pre.max_side)
        return 3 * h * w

    def detections(self, img: np.ndarray, infer: Infer) -> Any:
        """vkt.runtime.textdet.Detections (float32 polygons in source pixels) of one BGR uint8 image."""
        from vkt.runtime.textdet import db_postprocess, input_meta

        plan = self.pre.plan(img)
        h, w = plan.size
        x = np.empty((1, 3, h, w), dtype=np.float32)
        self.pre.write(img, plan, x[0])
        prob = infer({self.input_name: x})[self.output_name]  # [1, C, h, w]
        det = db_postprocess(prob[0, self.params.channel], plan.src_size, self.params)
        det.meta.update(input_meta(plan, self.pre))
        return det


class ObjectDetectTask:
    """The DETR Detector's stages for one image (raw or post-processed graph, with or without pixel_mask)."""

    task = "object-detection"

    def __init__(self, preprocess: Mapping[str, Any], postprocess: Mapping[str, Any], spec: Any):
        from vkt.runtime.detection import MASK, SIZES, DetrParams, output_kind

        self.params = DetrParams.from_dict(postprocess)
        self.kind = output_kind(spec.output_names, InputError)
        self.input_name = preprocess.get("input") or spec.input_names[0]
        self.has_mask = MASK in spec.input_names
        self.has_sizes = SIZES in spec.input_names
        first = spec.input(self.input_name).shape[0]
        self.static_batch = first if isinstance(first, int) else 1  # a static graph takes exactly its batch
        self.pre = Preprocessor(preprocess)

    def __call__(self, img: np.ndarray, infer: Infer) -> dict[str, Any]:
        """JSON-ready detections of one BGR uint8 image; ``infer(feed) -> outputs`` runs the model."""
        return self.detections(img, infer).to_dict()

    def cost(self, height: int, width: int) -> int:
        """Elements of the model input for an image of this size (admission control weighs requests by it)."""
        h, w = resized_size(height, width, self.pre.resize, self.pre.max_side)
        return 3 * h * w * self.static_batch

    def detections(self, img: np.ndarray, infer: Infer) -> Any:
        """vkt.runtime.detection.Detections (xyxy float32 boxes in source pixels) of one BGR uint8 image."""
        from vkt.runtime.detection import MASK, SIZES, decode_raw, select

        plan = self.pre.plan(img)
        h, w = plan.size
        n = self.static_batch
        x = np.zeros((n, 3, h, w), dtype=np.float32)
        self.pre.write(img, plan, x[0])
        feed = {self.input_name: x}
        if self.has_mask:
            feed[MASK] = np.zeros((n, h, w), dtype=np.float32)
            feed[MASK][0] = 1.0
        if self.has_sizes:
            sizes = np.ones((n, 2), dtype=np.float32)
            sizes[0] = plan.src_size
            feed[SIZES] = sizes
        out = infer(feed)
        if self.kind == "raw":
            s, c, b = decode_raw(out["logits"][0], out["pred_boxes"][0])
            det = select(s, c, b, plan.src_size, self.params, normalized=True)
        else:
            det = select(out["scores"][0], out["labels"][0], out["boxes"][0], plan.src_size, self.params, normalized=False)
        det.meta["input_size"] = {"height": h, "width": w}
        return det


class _BatchedRunner(Runner):
    """A Runner whose calls go through a server batcher, within the deadline of the request in progress."""

    backend = "batched"

    def __init__(self, server: Any, model: str):
        super().__init__(server.models[model].spec, model)
        self.server, self.model = server, model
        self.deadline = 0.0  # time.monotonic() of the current request's deadline (one generation at a time)

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineError(f"model {self.model!r}: the request's timeout passed during generation")
        return self.server.batchers[self.model].infer(feed, left)


GENERATE_KEYS = {"prompt": str, "negative_prompt": str, "steps": int, "guidance_scale": (int, float), "seed": int,
                 "height": int, "width": int}


class GenerateTask:
    """Txt2Img over the server's text_encoder / unet / vae_decoder models of one SD bundle."""

    task = "text-to-image"

    def __init__(self, server: Any, bundle: Any, models: Mapping[str, str], limits: TaskLimits):
        from vkt.runtime.txt2img import Txt2Img

        self.name = bundle.name
        self.limits = limits
        # Runners are created lazily by Txt2Img (no sessions until activate): replace them with the batchers'.
        self.pipe = Txt2Img(bundle, progress_bar=False)
        self.runners = {c: _BatchedRunner(server, m) for c, m in models.items()}
        self.pipe.runners = dict(self.runners)
        self._lock = threading.Lock()
        self._waiting = 0
        self._count = threading.Lock()

    def parse(self, body: bytes) -> dict[str, Any]:
        req = loads(body)
        if not isinstance(req, dict):
            raise RequestError(f"the body must be a JSON object with a 'prompt', got {type(req).__name__}")
        unknown = sorted(set(req) - set(GENERATE_KEYS))
        if unknown:
            raise RequestError(f"unknown keys {unknown}; expected some of {sorted(GENERATE_KEYS)}")
        if "prompt" not in req:
            raise RequestError("'prompt' is required (a string)")
        for k, v in req.items():
            want = GENERATE_KEYS[k]
            if v is None and k not in ("prompt",):
                continue
            if isinstance(v, bool) or not isinstance(v, want):
                kind = "a string" if want is str else "an integer" if want is int else "a number"
                raise RequestError(f"{k!r} must be {kind}, got {v!r:.80}")
        steps = req.get("steps", 20)
        if steps is not None and not 1 <= steps <= self.limits.max_steps:
            raise RequestError(f"'steps' must be in [1, {self.limits.max_steps}] (this server's limit), got {steps}")
        return req

    def __call__(self, args: Mapping[str, Any], deadline: float) -> tuple[bytes, int]:
        with self._count:
            if self._waiting >= self.limits.max_waiting + 1:
                raise UnavailableError(f"model {self.name!r} is busy: {self._waiting} generations running or waiting; "
                                       "retry later")
            self._waiting += 1
        try:
            if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise DeadlineError(f"model {self.name!r}: the request waited for another generation past its timeout")
            try:
                for r in self.runners.values():
                    r.deadline = deadline
                seed = args.get("seed")
                if seed is None:
                    seed = int(np.random.default_rng().integers(0, 2**31 - 1))
                images = self.pipe(args["prompt"], negative_prompt=args.get("negative_prompt"), height=args.get("height"),
                                   width=args.get("width"), steps=args.get("steps") or 20,
                                   guidance_scale=7.5 if args.get("guidance_scale") is None else args["guidance_scale"],
                                   seed=seed)
            finally:
                self._lock.release()
        finally:
            with self._count:
                self._waiting -= 1
        ok, png = cv2.imencode(".png", cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
            raise RuntimeError("PNG encoding failed")
        return png.tobytes(), int(seed)


# ---- routes ----------------------------------------------------------------------------------------
class TaskRoutes:
    """The task endpoints of one server; :func:`add_task_routes` builds it from the served bundles."""

    def __init__(self, server: Any, limits: TaskLimits = TaskLimits()):
        self.server = server
        self.limits = limits
        self.detect: dict[str, TextDetectTask | ObjectDetectTask] = {}
        self.generate: dict[str, GenerateTask] = {}

    def register(self) -> None:
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            self.server.add_route("POST", prefix + "/detect", self._detect, "detect")
            self.server.add_route("POST", prefix + "/generate", self._generate, "generate")

    def _detect(self, req: Request) -> Response:
        # 1. Which model, and does it detect (404 before reading the body).
        model = self.server.model_for(req)
        task = self.detect.get(model.name)
        if task is None:
            raise NotFoundError(f"model {model.name!r} (task {model.info.get('vkt_task', '?')!r}) has no /detect endpoint; "
                                f"models that detect: {sorted(self.detect)}; tensors go to /v2/models/{model.name}/infer")
        check_image_content_type(req)
        # 2. Read and decode the image.
        cfg = self.server.config
        deadline = time.monotonic() + cfg.timeout_s
        self.server.admission[model.name].check(cfg.timeout_s)  # overloaded: 503 before the upload, not after it
        body = req.body(cfg.max_body_bytes, cfg.timeout_s)
        batcher = self.server.batchers[model.name]
        # 3. The image's size from its header (415/400/413 before anything is decoded); admit by expected wait
        #    (overload should cost little), decode within the memory budget, pre-process, run through the batcher,
        #    post-process.
        info = check_image(body, self.limits.max_image_pixels)
        with self.server.admission[model.name].admit(max(0.0, deadline - time.monotonic()), task.cost(info.height, info.width)):
            img = decode_image(body, self.limits.max_image_pixels, self.server.decode_budget)
            del body
            result = task(img, lambda feed: batcher.infer(feed, max(0.0, deadline - time.monotonic())))
        return json_response({"model_name": model.name, "model_version": model.version, "task": task.task, **result})

    def _generate(self, req: Request) -> Response:
        name = req.params["model"]
        task = self.generate.get(name)
        if task is None:
            if name in self.server.models:
                req.model = name
                raise NotFoundError(f"model {name!r} has no /generate endpoint; Stable Diffusion bundles served here: "
                                    f"{sorted(self.generate)}")
            raise NotFoundError(f"unknown model {clip(name)!r}; /generate serves the Stable Diffusion bundles "
                                f"{sorted(self.generate)}")
        req.model = name
        version = req.params.get("version")
        if version is not None and version != "1":
            raise NotFoundError(f"model {name!r} has no version {clip(version)!r}; versions: ['1']")
        cfg = self.server.config
        deadline = time.monotonic() + cfg.timeout_s
        args = task.parse(req.body(min(cfg.max_body_bytes, self.limits.max_json_bytes), cfg.timeout_s))
        png, seed = task(args, deadline)
        return 200, png, {"Content-Type": "image/png", "X-Vkt-Seed": str(seed)}


def add_task_routes(server: Any, bundles: Sequence[Any] | None = None, limits: TaskLimits = TaskLimits()) -> TaskRoutes:
    """Register /detect and /generate on ``server`` for the task bundles it serves.

    Args:
        server: an InferenceServer (not yet started or started: routes are looked up per request).
        bundles: the served ``vkt.bundle.Bundle`` objects; None: loaded (unverified, already checked)
            from each served model's ``bundle_root`` (as ``models_from_bundles`` records it).
        limits: TaskLimits.
    Text-detection bundles get /detect with polygons, object-detection bundles /detect with boxes,
    Stable Diffusion bundles (components text_encoder, unet, vae_decoder served as
    ``<bundle>-<component>``) /generate under the bundle's name. Other models get none.
    """
    from vkt.bundle import Bundle

    routes = TaskRoutes(server, limits)
    if bundles is None:
        roots = sorted({m.bundle_root for m in server.models.values() if m.bundle_root})
        bundles = [Bundle.load(r, verify=False) for r in roots]
    by_root = {str(b.root): b for b in bundles}
    for m in server.models.values():
        b = by_root.get(m.bundle_root)
        if b is None:
            continue
        if b.task == "text-detection":
            routes.detect[m.name] = TextDetectTask(b.preprocess, b.postprocess, m.spec)
        elif b.task == "object-detection":
            routes.detect[m.name] = ObjectDetectTask(b.preprocess, b.postprocess, m.spec)
    for b in bundles:
        comps = {c: f"{b.name}-{c}" for c in ("text_encoder", "unet", "vae_decoder")}
        if b.family == "sd" and all(n in server.models for n in comps.values()):
            if b.name in server.models:
                raise InputError(f"SD bundle {b.name!r}: a served model already has that name; /generate would be ambiguous")
            routes.generate[b.name] = GenerateTask(server, b, comps, limits)
    routes.register()
    if routes.detect or routes.generate:
        log.info("task endpoints: detect %s, generate %s", sorted(routes.detect), sorted(routes.generate))
    return routes
