"""Run the service on a local Ray instance: what `zeroi2v serve` and the tests start.

For a Ray cluster, deploy the same application with the Serve config file instead:
`serve deploy deploy/serve.yaml` (import path service.deployments:build_app).
"""

from __future__ import annotations

import time

LOOPBACK = ("127.0.0.1", "localhost")  # Ray's loopback is IPv4
ALL_INTERFACES = ("0.0.0.0", "::")


def start(
    args: dict,
    host: str = "127.0.0.1",
    port: int = 8000,
    metrics_port: int = 8080,
    metrics_host: str = "127.0.0.1",
):
    """Start Ray (metrics exported on `metrics_host`:`metrics_port`), Serve's HTTP proxy on
    `host`:`port` and the app.

    Ray has no say in who connects to its GCS, raylet, worker and agent ports beyond its token
    authentication, and on Linux they listen on every interface. One machine needs none of them
    reachable: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's switch for a node that is not
    part of a cluster) they all listen on loopback, the metrics export too; only Serve's HTTP
    proxy listens where `host` says. Ray offers no way to open the metrics export alone, so a
    `metrics_host` of all interfaces (Docker, where Prometheus scrapes from another container)
    leaves Ray's binding as it is: inside a container only the published ports are reachable.

    Returns once the model replica is loaded and warmed up and the ingress is serving.
    """
    import os

    if metrics_host in LOOPBACK:
        # Read when Ray is imported (by this process; its processes inherit it), so set first.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    elif metrics_host not in ALL_INTERFACES:
        raise ValueError(
            f"metrics host {metrics_host!r}: Ray exports metrics on loopback or on every "
            f"interface ({', '.join(LOOPBACK[:1] + ALL_INTERFACES[:1])})"
        )

    # Ray's metrics export interval, 10 s by default: the in-flight and queue gauges lagged by
    # about 15 s behind the service. Ray's processes inherit it.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")

    import ray
    from ray import serve
    from ray._private import ray_constants

    from service.deployments import build_app

    loopback = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    if loopback and ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError(
            "Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so its "
            "servers would listen on every interface: set it before importing Ray"
        )
    app = build_app(local_defaults(args))  # validates the settings before anything starts
    # Serve replaces a proxy that misses 3 health checks of 10 s (ready check: 5 s). On a CPU
    # host busy with decoding and a CPU model, a healthy proxy can be that slow to answer, and
    # the restart then fails requests in flight. The processes Ray starts inherit these.
    for name in ("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "30")
    ray.init(
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        configure_logging=True,
        logging_level="WARNING",
        log_to_driver=False,
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name="zeroi2v", route_prefix="/")


def local_defaults(args: dict) -> dict:
    """Placement for one machine, where the settings (or ZEROI2V_* variables) leave it open:
    a decode replica per core, the model on this machine's GPU if it has one. Ray counts
    neither the model replica nor the ingress against the cores: the model's threads
    (torch_threads) and the decoders share them as the OS schedules."""
    import math
    import os

    import torch

    from service.settings import ServiceSettings

    args = {k: v for k, v in args.items() if v is not None}
    given = ServiceSettings.from_env(**args)  # what the caller and the environment say
    per_replica = max(1, math.ceil(given.decode_cpus))
    replicas = max(1, (os.cpu_count() or 1) // per_replica)
    local = {
        "decode_replicas": min(replicas, given.decode_max_replicas or replicas),
        "model_gpus": 1 if torch.cuda.is_available() else 0,
        "model_cpus": 0,
    }
    unset = {
        k: v for k, v in local.items() if k not in args and f"ZEROI2V_{k.upper()}" not in os.environ
    }
    return {**unset, **args}


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def serve_forever(
    args: dict, host: str, port: int, metrics_port: int, metrics_host: str = "127.0.0.1"
) -> None:
    import signal
    import sys

    start(args, host, port, metrics_port, metrics_host)
    # `docker stop`, systemd and a shell's background jobs stop with SIGTERM, not Ctrl-C: leave
    # through the same cleanup, or Ray's processes outlive the command. (After start: ray.init
    # installs a SIGTERM handler of its own that aborts.)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"zeroi2v is serving on http://{host}:{port} (docs: /docs); "
        f"Prometheus metrics on http://{metrics_host}:{metrics_port}/metrics; Ctrl-C stops it",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
