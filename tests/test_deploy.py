"""deploy/ agrees with the code: the image, the compose file and the Kubernetes manifests.

Files are only parsed (no docker, kubectl or broker here). Every dlabel container of
compose and Kubernetes is read into one ``Container`` shape, then each check runs over
all of them: the command line exists in ``streams.cli.main``, the mounted config loads,
its paths are on writable persistent volumes, metrics ports line up, images follow the
tag convention, and the environment is what the code reads.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from schemas.config import BROKER_ENV, PipelineConfig, load_config
from schemas.pii import PII_KEY_ENV
from streams.cli import main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DEPLOY, K8S = ROOT / "deploy", ROOT / "deploy" / "k8s"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
PACKAGES = [p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
            ["tool"]["setuptools"]["packages"]["find"]["include"]]
AWS_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRET_ENV = {PII_KEY_ENV, "DLABEL_KAFKA_PASSWORD"} | AWS_KEYS
KNOWN_ENV = SECRET_ENV | {BROKER_ENV, "DLABEL_METRICS_PORT", "AWS_REGION", "AWS_DEFAULT_REGION",
                          "AWS_ENDPOINT_URL"}
K8S_DOCS = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
WORKLOADS = {d["metadata"]["name"]: d for d in K8S_DOCS
             if d["kind"] in ("StatefulSet", "Deployment")}
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text()).splitlines()
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for line in lines
            if line.strip() and not line.lstrip().startswith("#") for p in [line.split(None, 1)]]


ENTRYPOINT = json.loads([a for i, a in dockerfile() if i == "ENTRYPOINT"][-1])


@dataclass
class Container:
    platform: str                   # "compose" or "k8s"
    workload: str                   # compose service or k8s StatefulSet/Deployment
    image: str
    argv: list[str]
    env: dict[str, object]          # name -> value, or ("secret", secret name, key)
    ports: list[int]                # metrics ports published (compose) / declared (k8s), sorted
    writable: set[str] = field(default_factory=set)  # mount paths on writable persistent volumes
    mounted: set[str] = field(default_factory=set)   # every mount path
    configs: dict[str, str] = field(default_factory=dict)  # mounted file path -> its text

    def __str__(self) -> str:
        return f"{self.platform}:{self.workload}"


def parse_env_file(path: Path, commented: bool = False) -> dict[str, str]:
    pattern = r"^{}([A-Za-z_][A-Za-z0-9_]*)=(.*)$".format(r"#?\s*" if commented else "")
    lines = path.read_text().splitlines()
    return dict(m.groups() for line in lines if (m := re.match(pattern, line)))


def compose_containers() -> list[Container]:
    out = []
    for name, svc in COMPOSE["services"].items():
        if name == "kafka":
            continue
        env_files = svc.get("env_file", [])
        env = {}
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            env |= parse_env_file(DEPLOY / f"{env_file}.example")
        env |= svc.get("environment") or {}
        argv = svc.get("entrypoint", ENTRYPOINT) + svc["command"]
        c = Container("compose", name, svc["image"], argv, env,
                      sorted(int(p.split(":")[-1]) for p in svc.get("ports", [])))
        for vol in svc.get("volumes", []):
            source, target, *mode = vol.split(":")
            c.mounted.add(target)
            if source in COMPOSE["volumes"] and mode != ["ro"]:
                c.writable.add(target)
            elif (DEPLOY / source).is_file():
                c.configs[target] = (DEPLOY / source).read_text()
        out.append(c)
    return out


def k8s_containers() -> list[Container]:
    config_maps = {d["metadata"]["name"]: d["data"] for d in K8S_DOCS if d["kind"] == "ConfigMap"}
    out = []
    for name, wl in WORKLOADS.items():
        pod = wl["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in wl["spec"].get("volumeClaimTemplates", [])}
        for ct in pod["containers"]:
            env = {e["name"]: e.get("value") or ("secret", e["valueFrom"]["secretKeyRef"]["name"],
                                                  e["valueFrom"]["secretKeyRef"]["key"])
                   for e in ct.get("env", [])}
            ports = sorted(p["containerPort"] for p in ct.get("ports", []) if p["name"] == "metrics")
            argv = ct.get("command", ENTRYPOINT) + ct.get("args", [])
            c = Container("k8s", name, ct["image"], argv, env, ports)
            for m in ct.get("volumeMounts", []):
                c.mounted.add(m["mountPath"])
                vol = volumes.get(m["name"], {})
                if not m.get("readOnly") and (m["name"] in claims or "persistentVolumeClaim" in vol):
                    c.writable.add(m["mountPath"])
                if "configMap" in vol:
                    for key, text in config_maps[vol["configMap"]["name"]].items():
                        c.configs[f"{m['mountPath']}/{key}"] = text
            out.append(c)
    return out


CONTAINERS = compose_containers() + k8s_containers()


def parse_command(c: Container) -> dict:
    """Check ``dlabel <sub> [options]`` against the click group; return values by param name."""
    assert c.argv[0] == "dlabel", f"{c}: runs {c.argv[0]!r}, not dlabel"
    sub, args = c.argv[1], list(c.argv[2:])
    assert sub in main.commands, f"{c}: dlabel has no subcommand {sub!r}"
    cmd = main.commands[sub]
    by_opt = {o: p for p in cmd.params for o in p.opts}
    values = {}
    while args:
        opt = args.pop(0)
        assert opt in by_opt, f"{c}: dlabel {sub} has no option {opt!r}"
        p = by_opt[opt]
        raw = True if p.is_flag else args.pop(0)
        keep = p.is_flag or isinstance(p.type, click.Path)  # the path is in the container
        values[p.name] = raw if keep else p.type.convert(raw, p, None)
    missing = [p.opts[0] for p in cmd.params if p.required and p.name not in values]
    assert not missing, f"{c}: dlabel {sub} misses required {missing}"
    return values


def option(c: Container, *names: str) -> str | None:
    """An option's value as written (for the checks that do not test the command itself)."""
    return next((c.argv[i + 1] for i, a in enumerate(c.argv[:-1]) if a in names), None)


def role(c: Container) -> str:
    return "jobs" if c.argv[1] == "jobs" else option(c, "--only") or "join+sink"


def config_of(c: Container, tmp_path: Path) -> PipelineConfig:
    path = option(c, "-c", "--config")
    assert path in c.configs, f"{c}: -c {path} is not a mounted config file"
    local = tmp_path / f"{c.platform}-{c.workload}.yaml"
    local.write_text(c.configs[path])
    # a variable from a Secret is set in the container (e.g. a SASL password the config needs)
    env = {k: v if isinstance(v, str) else "from-secret" for k, v in c.env.items()}
    env[PII_KEY_ENV] = "x"
    return load_config(local, environ=env)


def under(path: str, mounts: set[str]) -> bool:
    p = PurePosixPath(path)
    return p.is_absolute() and any(p == PurePosixPath(m) or PurePosixPath(m) in p.parents
                                   for m in mounts)


def test_dockerfile_installs_the_project_as_non_root():
    steps = dockerfile()
    assert [a for i, a in steps if i == "FROM"][-1].split()[0] == "python:3.11-slim"
    copied = {PurePosixPath(src).name for i, a in steps if i == "COPY" for src in a.split()[:-1]}
    assert {"pyproject.toml", PROJECT["readme"], *PACKAGES} <= copied
    assert "rocksdb" in PROJECT["optional-dependencies"]
    assert any(i == "RUN" and "pip install '.[rocksdb]'" in a for i, a in steps)
    users = [a.split(":")[0] for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ENTRYPOINT == ["dlabel"] and "dlabel" in PROJECT["scripts"]
    assert not [a for i, a in steps if i in ("ENV", "ARG") and re.search(r"KEY|PASSWORD|SECRET", a)]
    labels = " ".join(a for i, a in steps if i == "LABEL")
    assert f'org.opencontainers.image.version="{VERSION}"' in labels


def test_image_gets_every_module_the_code_imports():
    """The image installs only the declared dependencies (and the rocksdb extra)."""
    todo = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["rocksdb"]
    closure: set[str] = set()
    while todo:
        req = Requirement(todo.pop())
        if canonicalize_name(req.name) in closure:
            continue
        closure.add(canonicalize_name(req.name))
        try:
            subs = [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            continue
        todo += [str(r) for r in subs if r.marker is None
                 or any(r.marker.evaluate({"extra": e}) for e in req.extras | {""})]
    imported = set()
    for source in (py for pkg in PACKAGES for py in (ROOT / pkg).glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
    dists = metadata.packages_distributions()
    third_party = sorted(imported - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"})
    undeclared = [m for m in third_party
                  if not {canonicalize_name(d) for d in dists.get(m, [m])} & closure]
    assert not undeclared, f"imported, not in pyproject's dependencies (so not in the image): " \
                           f"{undeclared}"


@pytest.mark.parametrize("c", CONTAINERS, ids=str)
def test_command_exists_in_the_cli(c: Container):
    values = parse_command(c)
    assert values.get("metrics_port") is not None, f"{c}: no --metrics-port"


@pytest.mark.parametrize("c", CONTAINERS, ids=str)
def test_config_volumes_ports_image_env(c: Container, tmp_path: Path):
    r, cfg = role(c), config_of(c, tmp_path)
    assert cfg.store == "rocksdb"
    local_dataset = not cfg.dataset.path.startswith("s3://")
    if "join" in r:
        assert under(cfg.state_dir, c.writable), f"{c}: state_dir not on a writable volume"
    if "sink" in r and local_dataset:
        assert under(cfg.dataset.path, c.writable), f"{c}: dataset.path not on a writable volume"
    if r == "jobs":
        assert under(cfg.model.path, c.writable), f"{c}: model.path not on a writable volume"
        assert not local_dataset or under(cfg.dataset.path, c.mounted), f"{c}: dataset not mounted"
    port = int(option(c, "--metrics-port"))
    assert c.ports == ([port, port + 1] if r == "join+sink" else [port]), f"{c}: ports {c.ports}"
    assert c.image.rsplit("/", 1)[-1] == f"dlabel:{VERSION}"
    assert set(c.env) <= KNOWN_ENV, f"{c}: unknown variables {set(c.env) - KNOWN_ENV}"
    needs = set()
    if "join" in r and any(f.pii == "hash" for f in cfg.features):
        needs.add(PII_KEY_ENV)
    if r != "join" and not local_dataset:
        needs |= AWS_KEYS
    assert needs <= set(c.env), f"{c}: missing variables {needs - set(c.env)}"


def test_one_sink_per_platform_and_join_replicas_within_partitions(tmp_path: Path):
    for platform in ("compose", "k8s"):
        sinks = [c for c in CONTAINERS if c.platform == platform and "sink" in role(c)]
        assert len(sinks) == 1, f"{platform}: {len(sinks)} sink containers"
    for c in (c for c in CONTAINERS if c.platform == "k8s"):
        wl = WORKLOADS[c.workload]
        if role(c) == "join":
            assert wl["kind"] == "StatefulSet" and wl["spec"]["volumeClaimTemplates"]
            assert wl["spec"]["replicas"] <= config_of(c, tmp_path).topics.partitions
        else:
            assert wl["kind"] == "Deployment"
            assert wl["spec"]["replicas"] == 1 and wl["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_pods_are_hardened_and_probed_on_metrics():
    for wl in WORKLOADS.values():
        template = wl["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert wl["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for ct in template["spec"]["containers"]:
            assert ct["securityContext"]["readOnlyRootFilesystem"] is True
            assert "/tmp" in {m["mountPath"] for m in ct["volumeMounts"]}
            assert ct["resources"]["requests"] and ct["resources"]["limits"]
            probe = ct["livenessProbe"].get("httpGet") or ct["livenessProbe"]["tcpSocket"]
            metrics = next(p for p in ct["ports"] if p["name"] == "metrics")
            assert probe["port"] in (metrics["name"], metrics["containerPort"])


def test_k8s_metrics_service_reaches_every_pod():
    services = [d for d in K8S_DOCS if d["kind"] == "Service" and d["spec"].get("ports")]
    assert services
    for svc in services:
        assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        target = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")["targetPort"]
        for wl in WORKLOADS.values():
            pod = wl["spec"]["template"]
            assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), \
                f"{svc['metadata']['name']} does not select {wl['metadata']['name']}"
            ports = [p for ct in pod["spec"]["containers"] for p in ct["ports"]]
            assert target in {p["name"] for p in ports} | {p["containerPort"] for p in ports}


def test_secrets_are_the_variables_the_code_reads():
    secrets = {d["metadata"]["name"]: d["stringData"] for d in K8S_DOCS if d["kind"] == "Secret"}
    assert {k: set(v) for k, v in secrets.items()} == {"dlabel-secrets": SECRET_ENV}
    assert all(v == "" for data in secrets.values() for v in data.values()), "example: no values"
    refs = [v for c in CONTAINERS for v in c.env.values() if isinstance(v, tuple)]
    assert refs and all(name in secrets and key in secrets[name] for _, name, key in refs)
    example = parse_env_file(DEPLOY / "dlabel.env.example", commented=True)
    assert PII_KEY_ENV in example and set(example) <= KNOWN_ENV
    assert all(example[k] == "" for k in SECRET_ENV & set(example)), "env example: no values"


def test_compose_kafka_is_kraft_and_reachable_at_the_configured_broker(tmp_path: Path):
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "KAFKA_ZOOKEEPER_CONNECT" not in env
    advertised = {a.split("://")[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for c in (c for c in CONTAINERS if c.platform == "compose"):
        assert config_of(c, tmp_path).bootstrap_servers in advertised
        svc = COMPOSE["services"][c.workload]
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kust["resources"]) == sorted(files)  # each exactly once
    assert all(i["newTag"] == VERSION for i in kust["images"] if i["name"] == "dlabel")
