"""The Dockerfile and deploy/docker-compose.yaml, checked without Docker (issue 17, item 10):
CI cannot build or start them, so this lints what matters. The image: a pinned base, a
non-root user, a health check on a route the gateway serves, every file it copies present and
not ignored, `hermes serve` as its entry point with options the command has. The compose
file: pinned images, every file it mounts present, and the gateway's config, the emulated
engines, Prometheus and Grafana pointing at each other's names and ports consistently."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from hermes.cli import app
from hermes.gateway.build import build_gateway
from hermes.gateway.config import load_gateway_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PINNED = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments gone."""
    joined, out = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not joined and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        text = (joined + line).strip()
        joined = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    return [str(x) for x in yaml.safe_load(args)]  # a JSON array is YAML too


def _pinned(image: str) -> bool:
    return (
        image.split(":")[-1] != "latest"
        and bool(PINNED.match(image))
        and (":" in image.split("/")[-1] or "@sha256:" in image)
    )


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions(ROOT / "Dockerfile")
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def _options(*command: str) -> set[str]:
    """The long options of a `hermes` command."""
    group: Any = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]
    return {o for p in group.params for o in getattr(p, "opts", []) if o.startswith("--")}


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_base_image_is_pinned() -> None:
    stages = [args.split() for word, args in _instructions(ROOT / "Dockerfile") if word == "FROM"]
    assert stages
    for words in stages:
        assert _pinned(words[0]), f"FROM {words[0]}: pin a version (or a digest), not a moving tag"


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    users = [args for word, args in _final_stage() if word == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    created = " ".join(args for word, args in _final_stage() if word == "RUN")
    assert re.search(rf"useradd\b.*\b{re.escape(users[-1])}\b", created), "USER is never created"


def test_every_copied_file_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv"} <= set(ignored)  # the build context stays small
    for word, args in _instructions(ROOT / "Dockerfile"):
        if word != "COPY" or "--from=" in args:
            continue
        for source in shlex.split(args)[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            hit = [p for p in ignored if fnmatch.fnmatch(source, p.rstrip("/"))]
            assert not hit, f"COPY {source}: excluded by .dockerignore ({hit})"


def test_the_entry_point_is_hermes_serve_with_options_it_has() -> None:
    final = dict(_final_stage())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = _exec_form(final["ENTRYPOINT"])
    assert entry == ["hermes", "serve"]
    assert "hermes" in scripts
    cmd = _exec_form(final["CMD"])
    assert {a for a in cmd if a.startswith("--")} <= _options("serve")
    assert _flag(cmd, "--host") == "0.0.0.0"  # reachable from outside the container
    assert final["EXPOSE"].split("/")[0] == _flag(cmd, "--port")


def test_the_health_check_probes_a_route_of_the_gateway_on_its_port() -> None:
    final = dict(_final_stage())
    probe = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", final["HEALTHCHECK"])
    assert probe, final["HEALTHCHECK"]
    assert probe.group(1) == final["EXPOSE"].split("/")[0]
    gateway = build_gateway(load_gateway_config(DEPLOY / "gateway.yaml"))
    assert probe.group(2) in {getattr(r, "path", None) for r in gateway.app.routes}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    return loaded


def test_compose_images_are_pinned_or_built_here() -> None:
    for name, svc in _compose()["services"].items():
        if "build" in svc:
            build = svc["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        else:
            assert _pinned(svc["image"]), f"{name}: pin the image version, got {svc['image']}"


def test_compose_mounts_only_files_that_exist() -> None:
    mounts = 0
    for name, svc in _compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}: no such file"
                mounts += 1
    assert mounts >= 5  # the gateway's config, Prometheus's two files, Grafana's two


def _mounted(service: dict[str, Any], target: str) -> Path:
    """The file of this repository a service sees at `target`."""
    for volume in service.get("volumes", []):
        source, inside = (str(x) for x in volume.split(":")[:2])
        if target == inside or target.startswith(inside.rstrip("/") + "/"):
            return DEPLOY / source / Path(target).relative_to(inside)
    raise AssertionError(f"nothing is mounted at {target}")


def test_the_gateway_reaches_the_engines_by_name_and_port() -> None:
    services = _compose()["services"]
    gateway = services["gateway"]
    cfg = load_gateway_config(_mounted(gateway, _flag(gateway["command"], "--config")))
    assert f"{cfg.port}:{cfg.port}" in gateway["ports"]
    assert cfg.host == "0.0.0.0"
    assert cfg.backends
    for backend in cfg.backends:
        url = urlsplit(backend.url)
        engine = services[url.hostname or ""]
        args = engine["command"]
        assert engine["entrypoint"] == ["hermes", "emulate"]
        assert {a for a in args if a.startswith("--")} <= _options("emulate")
        assert str(url.port) == _flag(args, "--port")
        assert _flag(args, "--host") == "0.0.0.0"
        assert set(backend.models) <= {args[i + 1] for i, a in enumerate(args) if a == "--model"}
        assert url.hostname in gateway["depends_on"]
        assert f":{url.port}/health" in " ".join(engine["healthcheck"]["test"])


def test_prometheus_scrapes_the_gateway_and_loads_the_alert_rules() -> None:
    services = _compose()["services"]
    prometheus = services["prometheus"]
    config = yaml.safe_load(_mounted(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    port = load_gateway_config(DEPLOY / "gateway.yaml").port
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"gateway:{port}" in targets
    for rules in config["rule_files"]:
        loaded = yaml.safe_load(_mounted(prometheus, rules).read_text())
        assert loaded["groups"], rules


def test_grafana_provisions_prometheus_and_the_hermes_board() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    provisioning = "/etc/grafana/provisioning"
    sources = yaml.safe_load(
        _mounted(grafana, f"{provisioning}/datasources/prometheus.yaml").read_text()
    )
    url = urlsplit(sources["datasources"][0]["url"])
    assert url.hostname in services
    assert f"{url.port}:{url.port}" in services["prometheus"]["ports"]
    boards = yaml.safe_load(_mounted(grafana, f"{provisioning}/dashboards/hermes.yaml").read_text())
    folder = boards["providers"][0]["options"]["path"]
    board = _mounted(grafana, f"{folder}/hermes.json")
    assert board == DEPLOY / "grafana" / "hermes.json"
    assert board.is_file()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed here")
def test_hadolint_passes() -> None:
    res = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
