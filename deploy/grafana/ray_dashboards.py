"""Write Ray's own Grafana dashboards (Serve, Serve deployments) into deploy/grafana/.

Ray generates these at run time inside its session directory, where Grafana cannot see them.
This writes the same JSON, from the installed Ray's own dashboard factory, into
deploy/grafana/dashboards/ray/, which docker-compose.yml mounts and Grafana provisions beside
the zeroi2v dashboard. Their `datasource` variable picks the default Prometheus datasource,
which deploy/grafana/provisioning makes ours. After upgrading Ray, run it again:

    python deploy/grafana/ray_dashboards.py
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

OUT = Path(__file__).resolve().parent / "dashboards" / "ray"
DASHBOARDS = {
    "ray_serve.json": factory.generate_serve_grafana_dashboard,
    "ray_serve_deployment.json": factory.generate_serve_deployment_grafana_dashboard,
}


def render() -> dict[str, str]:
    """File name -> dashboard JSON, as the installed Ray generates it."""
    out = {}
    for name, generate in DASHBOARDS.items():
        content, _uid = generate()
        out[name] = json.dumps(json.loads(content), indent=1, sort_keys=True) + "\n"
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
