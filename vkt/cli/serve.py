"""`vkt serve`: serve bundles over KServe v2 HTTP (Triton's protocol) with dynamic batching."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    bundles: list[Path] = typer.Argument(..., help="Bundle folders; each is served as /v2/models/<bundle name>."),
    host: str = typer.Option("127.0.0.1", help="Bind address. Loopback by default; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, help="TCP port (0: any free port, printed at start)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most rows per backend call (capped by the profile's batch range; 1: no batching)."),
    max_queue_delay_ms: float = typer.Option(2.0, "--max-queue-delay-ms", help="How long the oldest request waits for others to batch with."),
    queue_size: int = typer.Option(64, "--queue-size", help="Requests admitted per model (decoding, queued or running); beyond it, or when the model's "
                                 "current pace says a request would miss its deadline, the server answers 503 at once."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body in MiB (413 above it)."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="Per-request deadline, arrival to result (504 after it)."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads per model for onnxruntime or OpenVINO "
                                "(default: the library's; onnxruntime: one per physical core)."),
    backend: str = typer.Option("ort", help="Runtime backend: ort, ort-cuda, ort-trt, trt, ov (OpenVINO CPU)."),
    precision: str = typer.Option("fp32", help="Bundle file to serve: fp32, fp16 or int8."),
    socket_timeout_s: float = typer.Option(10.0, "--socket-timeout-s", help="Close connections silent this long (stalled clients, idle keep-alive)."),
    max_connections: int = typer.Option(256, "--max-connections", help="Open connections (one thread each); more get 503."),
    max_connections_per_client: int = typer.Option(64, "--max-connections-per-client",
                                                   help="Open connections from one client address; more get 503 (slow clients "
                                                   "from one host cannot lock out the others)."),
    head_timeout_s: float = typer.Option(10.0, "--head-timeout-s", help="Time for a request's line and headers to arrive "
                                         "after their first byte (408 after it)."),
    decode_budget_mb: float = typer.Option(1024.0, "--decode-budget-mb", help="Memory that concurrent image decodes may "
                                           "hold, judged from the image headers; beyond it /detect waits briefly, then 503."),
    body_budget_mb: float = typer.Option(1024.0, "--body-budget-mb", help="Memory that request bodies being read or "
                                         "served may hold together (reserved as they arrive, a MiB ahead); beyond it "
                                         "a request waits briefly, then 503."),
    max_image_mpix: float = typer.Option(40.0, "--max-image-mpix", help="Largest image /detect decodes, in megapixels (413 above it)."),
    max_steps: int = typer.Option(100, "--max-steps", help="Most denoising steps a /generate request may ask for."),
) -> None:
    """Serve bundles until SIGTERM/SIGINT, then drain in-flight requests and exit 0.

    Endpoints: /v2/health/live and /ready, /v2, /v2/models/NAME with /ready, /config and /infer, /metrics.
    Task endpoints by the bundle's task: POST /v2/models/NAME/detect (image file bytes -> JSON polygons or
    boxes in source pixels) for text- and object-detection bundles; POST /v2/models/NAME/generate (JSON
    prompt -> PNG) for Stable Diffusion bundles.
    Triton's clients work unchanged: tritonclient.http.InferenceServerClient("127.0.0.1:8000").
    Overload answers 503 with Retry-After at once (nothing ran: retry) when the queue is full or the model's current pace
    says the request would miss its deadline; a deadline missed anyway is 504.
    """
    from vkt.errors import InputError
    from vkt.runtime.server import InferenceServer, ServerConfig, models_from_bundles
    from vkt.runtime.server.tasks import TaskLimits, add_task_routes

    checks = [("--port", port, 0 <= port <= 65535, "in [0, 65535]"), ("--max-batch", max_batch, max_batch >= 1, ">= 1"),
              ("--max-queue-delay-ms", max_queue_delay_ms, max_queue_delay_ms >= 0, ">= 0"),
              ("--queue-size", queue_size, queue_size >= 1, ">= 1"), ("--max-body-mb", max_body_mb, max_body_mb > 0, "> 0"),
              ("--timeout-s", timeout_s, timeout_s > 0, "> 0"), ("--socket-timeout-s", socket_timeout_s, socket_timeout_s > 0, "> 0"),
              ("--max-connections", max_connections, max_connections >= 1, ">= 1"),
              ("--max-connections-per-client", max_connections_per_client, max_connections_per_client >= 1, ">= 1"),
              ("--head-timeout-s", head_timeout_s, head_timeout_s > 0, "> 0"),
              ("--decode-budget-mb", decode_budget_mb, decode_budget_mb > 0, "> 0"),
              ("--body-budget-mb", body_budget_mb, body_budget_mb > 0, "> 0"),
              ("--max-image-mpix", max_image_mpix, max_image_mpix > 0, "> 0"), ("--max-steps", max_steps, max_steps >= 1, ">= 1")]
    for flag, value, ok, want in checks:
        if not ok:
            raise InputError(f"{flag} must be {want}, got {value}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    config = ServerConfig(host=host, port=port, max_batch_size=max_batch, max_queue_delay_us=int(max_queue_delay_ms * 1000),
                          queue_size=queue_size, max_body_bytes=int(max_body_mb * 2**20), timeout_s=timeout_s,
                          socket_timeout_s=socket_timeout_s, head_timeout_s=head_timeout_s, max_connections=max_connections,
                          max_connections_per_client=max_connections_per_client,
                          decode_budget_bytes=int(decode_budget_mb * 2**20), body_budget_bytes=int(body_budget_mb * 2**20),
                          drain_timeout_s=timeout_s)
    server = InferenceServer(models_from_bundles(bundles, backend=backend, precision=precision, threads=threads), config)
    add_task_routes(server, limits=TaskLimits(max_image_pixels=int(max_image_mpix * 1e6), max_steps=max_steps))
    # One plain line on stdout with the URL: scripts (and tests) read the port from it when --port 0.
    server.run(on_ready=lambda s: print(f"vkt serve: {', '.join(sorted(s.models))} on {s.url}", flush=True))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
