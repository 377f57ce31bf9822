"""`vkt serve`: KServe v2 / Open Inference Protocol over HTTP (Triton's clients work against it), with dynamic batching.

    from vkt.runtime.server import InferenceServer, ServerConfig, models_from_bundles
    with InferenceServer(models_from_bundles(["out/toy.vkt"]), ServerConfig(port=0)) as srv:
        print(srv.url)  # tritonclient.http.InferenceServerClient(srv.url[7:]) talks to it

Standard library HTTP (no extra dependency); never imports torch.
"""

from vkt.runtime.server.app import InferenceServer, ServerConfig
from vkt.runtime.server.batcher import DynamicBatcher
from vkt.runtime.server.model import ServedModel, models_from_bundles
from vkt.runtime.server.transport import Request, Response, json_response

__all__ = ["DynamicBatcher", "InferenceServer", "Request", "Response", "ServedModel", "ServerConfig", "json_response",
           "models_from_bundles"]
