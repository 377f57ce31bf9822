"""TrtRunner: lazy imports, clear errors on a machine without a GPU, and GPU parity with onnxruntime where one exists."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vkt.errors import BackendError, ModelError
from vkt.runtime.gpu import probe
from vkt.runtime.trt import TrtRunner

HAS_GPU = probe()[0] > 0
no_gpu_only = pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path; this machine has a GPU")


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory):
    import onnx

    from vkt.export.toy import toy_convnet

    model, spec = toy_convnet()
    path = tmp_path_factory.mktemp("trt_runner") / "toy.onnx"
    onnx.save(model, str(path))
    return path, spec


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory, toy_onnx):
    """A bundle with the toy model and a plan built by whichever TensorRT module is here (RTX on a CPU)."""
    if importlib.util.find_spec("tensorrt_rtx") is None and importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs tensorrt-rtx or tensorrt to build a plan")
    from vkt.bundle import BundleWriter
    from vkt.engines import BuildConfig, build_bundle_plan

    path, spec = toy_onnx
    dest = tmp_path_factory.mktemp("trt_bundle") / "toy.vkt"
    with BundleWriter(dest, family="generic", task="tensor") as w:
        w.add_component("model", spec)
        w.add_file(path, "model.onnx", role="fp32 onnx")
    two = spec.with_profiles({"batch": (1, 1, 2), "height": (16, 32, 64), "width": (16, 32, 64)},
                             {"batch": (1, 2, 4), "height": (64, 128, 256), "width": (64, 128, 256)})
    build_bundle_plan(dest, BuildConfig(module="auto"), spec=two)
    return dest


def test_importing_the_runner_loads_no_tensorrt_and_no_torch():
    code = ("import sys, vkt.runtime, vkt.runtime.trt; vkt.runtime.TrtRunner; "
            "bad = [m for m in ('tensorrt', 'tensorrt_rtx', 'torch', 'cuda') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_or_empty_plan_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="plan file not found: .*nope.plan"):
        TrtRunner(tmp_path / "nope.plan")
    (tmp_path / "empty.plan").write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        TrtRunner(tmp_path / "empty.plan")
    with pytest.raises(ModelError, match="is not a file"):
        TrtRunner(tmp_path)
    with pytest.raises(ModelError, match="empty"):
        TrtRunner(b"")


def test_plan_removed_before_activate_is_a_model_error(tmp_path):
    plan = tmp_path / "gone.plan"
    plan.write_bytes(b"x" * 64)
    runner = TrtRunner(plan)
    plan.unlink()
    with pytest.raises(ModelError, match="not found"):
        runner.activate()


def test_bad_options_are_backend_errors(tmp_path):
    plan = tmp_path / "p.plan"
    plan.write_bytes(b"x" * 64)
    with pytest.raises(BackendError, match="unknown TensorRT module 'trt'"):
        TrtRunner(plan, module="trt")
    with pytest.raises(BackendError, match="device must be a CUDA device index"):
        TrtRunner(plan, device=-1)


@no_gpu_only
def test_activate_without_gpu_is_a_clear_backend_error():
    runner = TrtRunner(b"not a plan, never deserialized")
    with pytest.raises(BackendError, match="TrtRunner needs an NVIDIA GPU") as e:
        runner.activate()
    assert "onnxruntime backend" in str(e.value)
    assert not runner.is_active


@no_gpu_only
def test_real_plan_on_a_gpu_less_machine_never_reaches_tensorrt(toy_bundle):
    # In a child process: if the GPU check were missing, TensorRT-RTX's runtime would segfault on deserialize.
    code = textwrap.dedent(f"""
        import sys
        from vkt.errors import BackendError
        from vkt.runtime import make_runner
        runner = make_runner({str(toy_bundle)!r}, backend="trt")
        try:
            runner.activate()
        except BackendError as e:
            print("BackendError:", e)
        bad = [m for m in ("tensorrt", "tensorrt_rtx") if m in sys.modules]
        assert not bad, bad
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BackendError: TrtRunner needs an NVIDIA GPU" in out.stdout


# ---- on a GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with cuda-python")
@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_matches_onnxruntime_across_shapes_and_profiles(toy_bundle, use_cuda_graph):
    from vkt.runtime import make_runner

    ort = make_runner(toy_bundle, backend="ort")
    trt = TrtRunner(toy_bundle / "model.fp32.plan", spec=None, use_cuda_graph=use_cuda_graph)
    rng = np.random.default_rng(0)
    shapes = [(1, 3, 32, 32), (2, 3, 64, 48), (1, 3, 16, 16), (4, 3, 256, 128), (1, 3, 32, 32), (1, 3, 32, 32)]
    with ort, trt:
        assert len(trt.spec.profiles) == 2  # read from the engine
        for shape in shapes:
            x = rng.standard_normal(shape).astype(np.float32)
            want = ort.infer({"image": x})["features"]
            got = trt.infer({"image": x})["features"]
            assert got.shape == want.shape == (shape[0], 8, shape[2], shape[3])
            np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)  # TF32 convs by default


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with cuda-python")
def test_buffers_grow_only_and_are_reused(toy_bundle):
    trt = TrtRunner(toy_bundle / "model.fp32.plan")
    with trt:
        trt.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})
        ptr, cap = trt._dev["image"].ptr, trt._dev["image"].capacity
        trt.infer({"image": np.zeros((1, 3, 32, 32), np.float32)})  # smaller: same buffer
        assert (trt._dev["image"].ptr, trt._dev["image"].capacity) == (ptr, cap)
        trt.infer({"image": np.zeros((4, 3, 128, 128), np.float32)})  # larger: grows
        assert trt._dev["image"].capacity > cap


# ---- the runner's bookkeeping on any machine: fake cudart + fake TensorRT ---------------------------
# Host memory stands in for device memory; the fake engine computes features = 2 * image + 1 and has two
# optimization profiles. This exercises shapes, profile switching, buffer growth/reuse, pinned staging and
# the CUDA-graph capture/replay logic; the real APIs are exercised by the GPU tests above.
import ctypes  # noqa: E402
import types  # noqa: E402


class _FakeCudart:
    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self):
        self.mem: dict[int, ctypes.Array] = {}
        self.mallocs = 0
        self.capturing: list | None = None
        self.launches = 0

    def _alloc(self, n):
        buf = (ctypes.c_ubyte * n)()
        self.mem[ctypes.addressof(buf)] = buf
        self.mallocs += 1
        return 0, ctypes.addressof(buf)

    def _free(self, ptr):
        del self.mem[ptr]
        return (0,)

    cudaMalloc = cudaMallocHost = _alloc
    cudaFree = cudaFreeHost = _free

    def cudaSetDevice(self, d): return (0,)  # noqa: E704
    def cudaStreamCreateWithFlags(self, f): return 0, 7  # noqa: E704
    def cudaStreamSynchronize(self, s): return (0,)  # noqa: E704
    def cudaStreamDestroy(self, s): return (0,)  # noqa: E704
    def cudaGraphExecDestroy(self, g): return (0,)  # noqa: E704
    def cudaGraphDestroy(self, g): return (0,)  # noqa: E704

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for work in graph_exec:
            work()
        return (0,)


def _fake_trt(rt: _FakeCudart):
    m = types.ModuleType("fake_tensorrt")
    m.__version__ = "10.0-fake"
    sev = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)
    m.ILogger = type("ILogger", (), {"Severity": sev, "__init__": lambda self: None})
    m.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    m.TensorLocation = types.SimpleNamespace(DEVICE="dev", HOST="host")
    m.nptype = lambda dt: dt
    ranges = [((1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 32, 32)), ((1, 3, 33, 33), (2, 3, 64, 64), (4, 3, 128, 128))]

    class Context:
        def __init__(self):
            self.profile, self.shape, self.addr, self.enqueues = 0, None, {}, 0

        def set_optimization_profile_async(self, p, stream):
            self.profile, self.shape = p, None
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = ranges[self.profile]
            if not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream):
            n = int(np.prod(self.shape))
            src, dst = self.addr["image"], self.addr["features"]

            def work():
                x = np.frombuffer((ctypes.c_float * n).from_address(src), np.float32)
                np.frombuffer((ctypes.c_float * n).from_address(dst), np.float32)[:] = 2 * x + 1

            self.enqueues += 1
            if rt.capturing is not None:
                rt.capturing.append(work)
            else:
                work()
            return True

    class Engine:
        num_io_tensors, num_optimization_profiles = 2, 2

        def get_tensor_name(self, i): return ["image", "features"][i]  # noqa: E704
        def get_tensor_dtype(self, n): return np.float32  # noqa: E704
        def get_tensor_location(self, n): return "dev"  # noqa: E704
        def get_tensor_mode(self, n): return "in" if n == "image" else "out"  # noqa: E704
        def get_tensor_shape(self, n): return (-1, 3, -1, -1)  # noqa: E704
        def get_tensor_profile_shape(self, n, p): return list(ranges[p])  # noqa: E704

        def create_execution_context(self):
            self.context = Context()
            return self.context

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            return Engine() if data.startswith(b"FAKEPLAN") else None

    m.Runtime = Runtime
    return m


@pytest.fixture()
def fake(monkeypatch):
    import vkt.runtime.trt as mod

    rt = _FakeCudart()
    trt = _fake_trt(rt)
    monkeypatch.setattr(mod, "require_gpu", lambda device, who: rt)
    monkeypatch.setattr(mod, "import_trt", lambda name: trt)
    return rt


@pytest.mark.parametrize("pinned", [True, False])
def test_fake_runner_shapes_profiles_and_buffer_reuse(fake, pinned):
    runner = TrtRunner(b"FAKEPLAN", pinned=pinned)
    rng = np.random.default_rng(0)
    with runner:
        spec = runner.spec  # read from the engine: one named axis per dynamic dim, one Profile per engine profile
        assert [p.axes["image_dim0"] for p in spec.profiles] == [(1, 1, 2), (1, 2, 4)]
        x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
        np.testing.assert_array_equal(runner.infer({"image": x})["features"], 2 * x + 1)
        ptr = runner._dev["image"].ptr
        small = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        out = runner.infer({"image": small})["features"]
        np.testing.assert_array_equal(out, 2 * small + 1)
        assert runner._dev["image"].ptr == ptr  # smaller shape: buffer reused
        big = rng.standard_normal((3, 3, 100, 64)).astype(np.float32)  # only profile 1 holds it
        np.testing.assert_array_equal(runner.infer({"image": big})["features"], 2 * big + 1)
        assert runner._profile == 1 and runner._dev["image"].capacity >= big.nbytes
        out2 = runner.infer({"image": small})["features"]  # back to profile 0
        assert runner._profile == 0 and out2 is not out
        np.testing.assert_array_equal(out2, 2 * small + 1)
        with pytest.raises(Exception, match="fit no"):
            runner.infer({"image": np.zeros((9, 3, 8, 8), np.float32)})
    assert not fake.mem  # every device and pinned buffer freed on deactivate


def test_fake_runner_cuda_graph_captures_once_per_shape(fake):
    runner = TrtRunner(b"FAKEPLAN", use_cuda_graph=True)
    with runner:
        for i in range(3):
            x = np.full((1, 3, 8, 8), i, np.float32)
            np.testing.assert_array_equal(runner.infer({"image": x})["features"], 2 * x + 1)
        assert fake.launches == 2  # call 1: warm-up enqueue + capture; calls 2-3: graph replays
        x = np.ones((2, 3, 16, 16), np.float32)  # new shape: re-captured
        np.testing.assert_array_equal(runner.infer({"image": x})["features"], 2 * x + 1)
        assert fake.launches == 2


def test_fake_runner_undeserializable_plan_is_a_model_error(fake):
    with pytest.raises(ModelError, match="cannot deserialize the plan"):
        TrtRunner(b"truncated").activate()


def test_fake_runner_takes_the_plans_profiles_over_the_specs(fake):
    from vkt.specs import ExportSpec, Profile, TensorSpec

    spec = ExportSpec((TensorSpec("image", "float32", ("batch", 3, "h", "w")),),
                      (TensorSpec("features", "float32", ("batch", 3, "h", "w")),),
                      (Profile({"batch": (1, 1, 1), "h": (8, 8, 8), "w": (8, 8, 8)}),))
    with TrtRunner(b"FAKEPLAN", spec=spec) as runner:
        assert [p.axes["h"] for p in runner.spec.profiles] == [(8, 16, 32), (33, 64, 128)]
        x = np.ones((4, 3, 40, 40), np.float32)  # outside the spec's profile, inside the plan's second
        np.testing.assert_array_equal(runner.infer({"image": x})["features"], 2 * x + 1)
