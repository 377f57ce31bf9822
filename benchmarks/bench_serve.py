"""Load test for `vkt serve`: N concurrent keep-alive clients on loopback for a bounded time.

Run: .venv/bin/python benchmarks/bench_serve.py [--clients 64] [--duration 60] [--max-batch 1,8]
     [--bundle DIR | --url http://127.0.0.1:PORT --model NAME] [--size 64] [--json-tensors] [--procs 2]
     [--detect-image page.png]   (task endpoint: POST /v2/models/NAME/detect with the image file's bytes)
     [--detect-images DIR]       (the same with every image file in DIR, each client taking them in turn
                                  from its own starting point: photos of varied sizes)
     [--json rows.jsonl]

Without --url it builds the toy conv bundle (or takes --bundle), starts `python -m vkt serve` on an
ephemeral loopback port once per --max-batch value, and reads the server's RSS from /proc before
and after the load. Clients run in --procs processes (threads inside) so the client's GIL is not
the bottleneck; they share the machine's cores with the server, so on a small machine the numbers
are a floor. Each client stops at --duration seconds or --max-requests requests, whichever first.
Prints one JSON row per run (benchmarks/schema.py) and a table: throughput, p50/p90/p99 latency, errors, 503s,
RSS, and the server's mean batch size (from /metrics).

RSS: snapshots at start (``rss_start_mb``: models loaded, no request yet), after ``--warmup-s``
seconds of the same load (``rss_before_mb``: ORT arenas, connection threads and buffers allocated)
and ``--settle-s`` seconds after the measured load (``rss_after_mb``), all three with the server idle; plus a sample every
0.5 s during the measured load. ``rss_growth_pct`` compares the median of the last quarter of those
samples with the median of the first quarter — what a leak shows, while single snapshots under load
swing by +-20% when each request allocates tens of MB (a 736x1472 image: 13 MB input, maps,
contours). ``rss_idle_growth_pct`` is after vs before, ``rss_growth_from_start_pct`` after vs start.

Exit status: 1 when a bound is broken — errors other than 503 (connection errors or any status
but 200/503), a server that did not exit 0 on SIGTERM, ``rss_growth_pct`` >= --max-rss-growth-pct
(default 10), or ``rss_idle_growth_pct`` (idle after the load vs idle after the warm-up) >=
--max-rss-idle-growth-pct (default 20) — so the script can gate CI; the broken bounds are printed.
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
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _client_proc(args: tuple) -> dict:
    """One process: ``threads`` keep-alive clients; returns latencies (s) and status counts."""
    import threading

    url, path, bodies, headers, threads, duration, max_requests, client_timeout = args
    u = urlsplit(url)
    stop = time.perf_counter() + duration
    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors = [0]
    lock = threading.Lock()

    def client(first: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=client_timeout)
        mine, codes, n = [], {}, 0
        while n < max_requests and time.perf_counter() < stop:  # bounded in count and in time
            body = bodies[(first + n) % len(bodies)]
            n += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                r = conn.getresponse()
                r.read()
                mine.append(time.perf_counter() - t0) if r.status == 200 else None
                codes[r.status] = codes.get(r.status, 0) + 1
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=client_timeout)
                if r.status == 503:
                    time.sleep(0.05)  # overloaded: back off briefly (Retry-After says 1 s) rather than spin
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=client_timeout)
                time.sleep(0.01)  # do not spin on a refusing server
        conn.close()
        with lock:
            lat.extend(mine)
            for k, v in codes.items():
                statuses[k] = statuses.get(k, 0) + v

    ts = [threading.Thread(target=client, args=(i + os.getpid(),)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration + 60)
    return {"lat": lat, "statuses": statuses, "errors": errors[0]}


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _get(url: str, path: str) -> tuple[int, bytes]:
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _batch_stats(url: str, model: str) -> tuple[float | None, int | None]:
    """Mean rows per backend call and number of calls, from the server's /metrics."""
    status, page = _get(url, "/metrics")
    if status != 200:
        return None, None
    vals = {}
    for line in page.decode().splitlines():
        for k in ("sum", "count"):
            if line.startswith(f'vkt_batch_size_{k}{{model="{model}"}} '):
                vals[k] = float(line.rsplit(" ", 1)[1])
    if vals.get("count"):
        return round(vals["sum"] / vals["count"], 2), int(vals["count"])
    return None, None


def start_server(bundle: Path, max_batch: int, queue_delay_ms: float, queue_size: int,
                 threads: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "vkt", "serve", str(bundle), "--host", "127.0.0.1", "--port", "0",
           "--max-batch", str(max_batch), "--max-queue-delay-ms", str(queue_delay_ms), "--queue-size", str(queue_size)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"vkt serve did not start (exit {proc.wait()}): {line!r}")
    return proc, line.rsplit(" on ", 1)[1].strip()


def make_request(model: str, x: np.ndarray | None, use_json: bool,
                 images: list[Path] | None) -> tuple[str, list[bytes], dict[str, str]]:
    """(path, bodies, headers) of the requests the clients repeat: /infer with ``x``, or /detect with ``images``' bytes."""
    from vkt.runtime.server.protocol import encode_infer_request

    if images:
        return f"/v2/models/{model}/detect", [p.read_bytes() for p in images], {"Content-Type": "application/octet-stream"}
    body, hl = encode_infer_request({"image": x}, binary=not use_json)
    headers = {"Content-Type": "application/json" if hl is None else "application/octet-stream"}
    if hl is not None:
        headers["Inference-Header-Content-Length"] = str(hl)
    return f"/v2/models/{model}/infer", [body], headers


def check_request(url: str, path: str, bodies: list[bytes], headers: dict[str, str]) -> None:
    """One checked request per body: a misconfigured run should fail loudly, not report 100% errors."""
    for body in bodies:
        _check_one(url, path, body, headers)


def _check_one(url: str, path: str, body: bytes, headers: dict[str, str]) -> None:
    from vkt.runtime.server.protocol import decode_infer_response

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("POST", path, body, headers)
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"the first request failed with {r.status}: {data[:300]!r}")
    if path.endswith("/detect"):
        json.loads(data)["detections"]
    else:
        hl = r.getheader("Inference-Header-Content-Length")
        decode_infer_response(data, int(hl) if hl else None)
    c.close()


def run_load(url: str, req: tuple[str, list[bytes], dict[str, str]], clients: int, procs: int, duration: float,
             max_requests: int, client_timeout: float = 60.0) -> dict:
    path, bodies, headers = req
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_client_proc, [(url, path, bodies, headers, n, duration, max_requests, client_timeout) for n in per])
    wall = time.perf_counter() - t0
    lat = np.array([v for p in parts for v in p["lat"]]) * 1e3
    statuses: dict[int, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    ok = statuses.get(200, 0)
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if lat.size else (lambda q: None)
    return {"requests": sum(statuses.values()), "ok": ok, "throughput_rps": round(ok / wall, 1),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(float(lat.max()), 2) if lat.size else None,
            "errors": sum(p["errors"] for p in parts), "status_503": statuses.get(503, 0),
            "status_other": {str(k): v for k, v in statuses.items() if k not in (200, 503)}, "wall_s": round(wall, 2),
            "request_bytes": round(float(np.mean([len(b) for b in bodies])))}


def _pct(after: float | None, before: float | None) -> float | None:
    return round(100.0 * (after - before) / before, 1) if after is not None and before else None


def measure(url: str, model: str, req: tuple[str, list[bytes], dict[str, str]], pid: int | None, a: argparse.Namespace) -> dict:
    """Checked request, RSS at start, warm-up load, RSS, measured load (RSS sampled), RSS; the row's figures."""
    import threading

    check_request(url, *req)
    start = _rss_mb(pid)
    if a.warmup_s > 0:
        run_load(url, req, a.clients, a.procs, a.warmup_s, a.max_requests, a.client_timeout_s)
    before = _rss_mb(pid)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            v = _rss_mb(pid)
            if v is not None:
                samples.append(v)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        row = run_load(url, req, a.clients, a.procs, a.duration, a.max_requests, a.client_timeout_s)
    finally:
        done.set()
        sampler.join(5)
    time.sleep(a.settle_s)  # the server returns freed heap when it goes idle (vkt/runtime/server/memory.py)
    after = _rss_mb(pid)
    mean_batch, calls = _batch_stats(url, model)
    q = len(samples) // 4
    first = float(np.median(samples[:q])) if q else None
    last = float(np.median(samples[-q:])) if q else None
    return {**row, "rss_start_mb": start, "rss_before_mb": before, "rss_after_mb": after,
            "rss_load_first_quarter_mb": first, "rss_load_last_quarter_mb": last,
            "rss_load_peak_mb": max(samples) if samples else None, "rss_samples": len(samples),
            "rss_growth_pct": _pct(last, first), "rss_idle_growth_pct": _pct(after, before),
            "rss_growth_from_start_pct": _pct(after, start), "mean_batch": mean_batch, "batches": calls}


def broken_bounds(row: dict, max_growth_pct: float, max_idle_growth_pct: float = 20.0) -> list[str]:
    """The load test's bounds: no errors but 503, a clean exit on SIGTERM, RSS growth under the limits."""
    out = []
    if row["errors"]:
        out.append(f"{row['errors']} connection errors")
    if row["status_other"]:
        out.append(f"statuses other than 200/503: {row['status_other']}")
    if row.get("exit_code_on_sigterm") not in (None, 0):
        out.append(f"the server exited {row['exit_code_on_sigterm']} on SIGTERM")
    g = row.get("rss_growth_pct")
    if g is not None and g >= max_growth_pct:
        out.append(f"RSS grew {g}% under load (median {row.get('rss_load_first_quarter_mb')} -> "
                   f"{row.get('rss_load_last_quarter_mb')} MB, first vs last quarter), limit {max_growth_pct}%")
    g = row.get("rss_idle_growth_pct")
    if g is not None and g >= max_idle_growth_pct:
        out.append(f"idle RSS after the load is {g}% above idle RSS after the warm-up ({row.get('rss_before_mb')} -> "
                   f"{row.get('rss_after_mb')} MB), limit {max_idle_growth_pct}%")
    if not row["ok"]:
        out.append("no request succeeded")
    return out


def serve_row(target: str, figures: dict, a: argparse.Namespace, payload: str, model: str, **extra) -> dict:
    """Schema row of one load run (``figures``: :func:`measure`'s dict)."""
    return row("serve", target, includes="client-side wall time of one HTTP request on loopback (keep-alive), "
               f"{a.clients} concurrent clients; p50/p90 over 200 responses only", model=model, backend="http",
               threads=a.threads, shape=payload, batch=None if getattr(a, "images", None) else a.batch, n=figures["ok"],
               clients=a.clients, duration_s=a.duration, payload=payload, **extra, **figures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    ap.add_argument("--warmup-s", type=float, default=5.0, help="seconds of the same load before the RSS baseline")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per client, a hard bound besides --duration")
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1), help="client processes")
    ap.add_argument("--bundle", type=Path, help="bundle to serve (default: the toy conv net, built in a temp dir)")
    ap.add_argument("--url", help="an already running loopback server (then --model; no RSS)")
    ap.add_argument("--model", default=None, help="model name (default: the bundle's)")
    ap.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    ap.add_argument("--size", type=int, default=64, help="image height and width")
    ap.add_argument("--batch", type=int, default=1, help="rows per request")
    ap.add_argument("--json-tensors", action="store_true", help="JSON tensors instead of the binary extension")
    ap.add_argument("--detect-image", type=Path, help="load the task endpoint: POST /detect with this image file's bytes")
    ap.add_argument("--detect-images", type=Path, help="... with every image file in this folder, in turn")
    ap.add_argument("--client-timeout-s", type=float, default=60.0,
                    help="clients' socket timeout; above the server's 30 s deadline, so a 504 is seen as one, not as a connection error")
    ap.add_argument("--settle-s", type=float, default=2.0, help="idle seconds after the load before the last RSS snapshot")
    ap.add_argument("--max-batch", default="8", help="comma list: one server run per value (e.g. 1,8)")
    ap.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads in the server")
    ap.add_argument("--max-rss-growth-pct", type=float, default=10.0, help="bound on rss_growth_pct (exit 1 at or above)")
    ap.add_argument("--max-rss-idle-growth-pct", type=float, default=20.0, help="bound on rss_idle_growth_pct (exit 1 at or above)")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    a = ap.parse_args()
    if a.clients < 1 or a.duration <= 0 or a.max_requests < 1 or a.warmup_s < 0:
        ap.error("--clients, --duration and --max-requests must be positive, --warmup-s >= 0")
    if a.detect_image is not None and not a.detect_image.is_file():
        ap.error(f"--detect-image {str(a.detect_image)!r} is not a file")
    if a.detect_images is not None and not a.detect_images.is_dir():
        ap.error(f"--detect-images {str(a.detect_images)!r} is not a folder")
    a.images = [a.detect_image] if a.detect_image else sorted(p for p in a.detect_images.iterdir() if p.is_file()) \
        if a.detect_images else None
    if a.detect_images is not None and not a.images:
        ap.error(f"--detect-images {str(a.detect_images)!r} holds no files")

    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    payload = (f"/detect {a.detect_image.name} ({a.detect_image.stat().st_size} bytes)" if a.detect_image
               else f"/detect {len(a.images)} images from {a.detect_images.name}/" if a.images
               else f"{a.batch}x3x{a.size}x{a.size} FP32 {'JSON' if a.json_tensors else 'binary'}")
    rows = []
    if a.url:
        if urlsplit(a.url).hostname not in LOOPBACK:
            raise SystemExit(f"--url must be a loopback address ({sorted(LOOPBACK)}), got {a.url!r}")
        if not a.model:
            raise SystemExit("--url needs --model")
        figures = measure(a.url, a.model, make_request(a.model, x, a.json_tensors, a.images), a.pid, a)
        rows.append(serve_row(a.url, figures, a, payload, a.model, server=a.url))
    else:
        with tempfile.TemporaryDirectory(prefix="vkt-bench-serve-") as tmp:
            bundle = a.bundle
            if bundle is None:
                import onnx

                from vkt.export.onnx_import import import_onnx
                from vkt.export.toy import toy_convnet

                model, _ = toy_convnet()
                onnx.save(model, f"{tmp}/toy.onnx")
                bundle = Path(tmp) / "toy"
                import_onnx(f"{tmp}/toy.onnx", bundle, profile={"batch": (1, 1, 8), "height": (16, 64, 256), "width": (16, 64, 256)})
            from vkt.bundle import Bundle

            name = a.model or Bundle.load(bundle).name
            req = make_request(name, x, a.json_tensors, a.images)
            for mb in [int(v) for v in a.max_batch.split(",")]:
                proc, url = start_server(bundle, mb, a.max_queue_delay_ms, a.queue_size, a.threads)
                try:
                    figures = measure(url, name, req, proc.pid, a)
                finally:
                    proc.terminate()
                    code = proc.wait(60)
                server = f"vkt serve --max-batch {mb} --max-queue-delay-ms {a.max_queue_delay_ms} --queue-size {a.queue_size}"
                rows.append(serve_row(server, figures, a, payload, name, server=server, max_batch=mb,
                                      exit_code_on_sigterm=code))
    with RowWriter(a.json) as out:
        for r in rows:
            r["broken_bounds"] = broken_bounds(r, a.max_rss_growth_pct, a.max_rss_idle_growth_pct)
            out.write(r)
    cols = ["max_batch", "clients", "throughput_rps", "p50_ms", "p99_ms", "errors", "status_503",
            "mean_batch", "rss_before_mb", "rss_after_mb", "rss_load_peak_mb", "rss_growth_pct"]
    print("\n" + " | ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r.get(c, '-')!s:>13}" for c in cols))
    broken = [f"{r.get('max_batch', r['server'])}: {b}" for r in rows for b in r["broken_bounds"]]
    if broken:
        print("\nBOUNDS BROKEN:\n  " + "\n  ".join(broken), file=sys.stderr)
        raise SystemExit(1)
    print(f"\nbounds held: no errors but 503, clean SIGTERM exit, RSS growth < {a.max_rss_growth_pct}% under load "
          f"and < {a.max_rss_idle_growth_pct}% idle after vs before")


if __name__ == "__main__":
    main()
