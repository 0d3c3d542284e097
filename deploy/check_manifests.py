#!/usr/bin/env python3
"""Checks that rendered Kubernetes manifests agree with the http-edge and ingest-core binaries.

Each TARGET is a kustomize directory (rendered with `kubectl kustomize`), a rendered YAML file,
or `-` for standard input. What is checked, per target:

- every apiVersion is a current, non-deprecated one (an allowlist);
- every environment variable a container gets (env, and the keys of ConfigMaps and Secrets used
  through envFrom) is one the binary accepts: it appears as `[env: NAME...]` in its `--help`
  (RUST_LOG and AWS_* are read by libraries, not clap, and are allowed; AWS keys never are); a
  value for an argument with `[possible values: ...]` is one of them;
- container ports equal the binaries' default listen ports (from `--help`), and the listen
  variables set in the manifests bind that port on all interfaces;
- probes: the edge's HTTP probes are /livez and /readyz on its port (and the binary contains
  those routes); the core's readiness is a native gRPC probe on its port (and the binary serves
  grpc.health.v1), or with TLS GET /readyz on the admin port;
- the edge's INGEST_CORE_URL names a headless Service that selects the core pods on its port;
- *_FILE variables and the gRPC TLS file settings point at keys of a mounted Secret (one in the
  manifests, or one a cert-manager Certificate issues);
- internal gRPC security: a core listening off loopback has credentials (client CA or tokens)
  or, only where there is no Ingress, INGEST_GRPC_INSECURE; with a public Ingress it has TLS and
  credentials; the edge's settings match (https:// URL and a CA with TLS, a client certificate
  with mTLS, a token with tokens); the core's Certificate is for server auth and names the name
  the edge checks; the edge's is for client auth and from the same issuer; with TLS the core's
  readiness is GET /readyz on its admin port (the kubelet's gRPC probe cannot do TLS);
- preStop sleep + INGEST_SHUTDOWN_GRACE_SECS < terminationGracePeriodSeconds;
- the strict securityContext on every container.

With --live it also starts both binaries on free loopback ports and asks them what the probes
ask: GET /livez and /readyz on the edge (with its core embedded), grpc.health.v1.Health/Check and
the admin port's GET /readyz on the core; and that the core refuses to start on 0.0.0.0 without
gRPC credentials (exit 64). Exits 1 if any check fails, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml

ALLOWED_API_VERSIONS = {
    "v1",
    "apps/v1",
    "autoscaling/v2",
    "batch/v1",
    "policy/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "storage.k8s.io/v1",
    "scheduling.k8s.io/v1",
    "coordination.k8s.io/v1",
    "discovery.k8s.io/v1",
    "admissionregistration.k8s.io/v1",
    # cert-manager's Issuer and Certificate (the internal gRPC certificates).
    "cert-manager.io/v1",
}
# Settings that name a file, besides the *_FILE ones: they must be keys of a mounted Secret.
PATH_SETTINGS = {
    "INGEST_GRPC_TLS_CERT",
    "INGEST_GRPC_TLS_KEY",
    "INGEST_GRPC_TLS_CLIENT_CA",
    "INGEST_CORE_TLS_CA",
    "INGEST_CORE_TLS_CERT",
    "INGEST_CORE_TLS_KEY",
}
# The keys of a Secret that cert-manager issues for a Certificate.
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# Variables read by libraries rather than clap.
LIBRARY_ENV = re.compile(r"^(RUST_LOG|RUST_BACKTRACE|AWS_[A-Z0-9_]+)$")
# Credentials that must come from the IAM role, never from a manifest.
FORBIDDEN_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
DEFAULT_GRACE_PERIOD = 30  # Kubernetes' default terminationGracePeriodSeconds


@dataclass(frozen=True)
class Role:
    """What the manifests must agree on for one binary."""

    name: str  # container name
    listen_env: str
    port_name: str


EDGE = Role("http-edge", "INGEST_LISTEN", "http")
CORE = Role("ingest-core", "INGEST_GRPC_LISTEN", "grpc")
ROLES = {r.name: r for r in (EDGE, CORE)}


@dataclass
class CliArg:
    env: str
    default: str | None = None
    possible: list[str] = field(default_factory=list)


@dataclass
class Binary:
    path: str
    args: dict[str, CliArg]  # by env name
    blob: bytes  # the executable, for route and service names

    def default_port(self, env: str) -> int | None:
        arg = self.args.get(env)
        if arg is None or arg.default is None:
            return None
        return port_of(arg.default)


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checks = 0

    def check(self, ok: bool, where: str, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.errors.append(f"{where}: {message}")
        return ok


# ---------------------------------------------------------------------------------------------
# --help parsing

ENTRY_START = re.compile(r"^\s*(?:-[A-Za-z0-9](?:[,\s]|$)|--[A-Za-z0-9])")
ENV_RE = re.compile(r"\[env:\s*([A-Za-z_][A-Za-z0-9_]*)(?:=[^\]]*)?\]")
DEFAULT_RE = re.compile(r"\[default:\s*([^\]]*)\]")
POSSIBLE_INLINE_RE = re.compile(r"\[possible values:\s*([^\]]*)\]")
POSSIBLE_ITEM_RE = re.compile(r"^\s*-\s+([A-Za-z0-9_.-]+)(?::|\s*$)")


def parse_help(text: str) -> dict[str, CliArg]:
    """The arguments of a clap `--help` output that have an environment variable."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if ENTRY_START.match(line) or not entries:
            entries.append([])
        entries[-1].append(line)
    args: dict[str, CliArg] = {}
    for lines in entries:
        block = "\n".join(lines)
        env = ENV_RE.search(block)
        if not env:
            continue
        arg = CliArg(env.group(1))
        default = DEFAULT_RE.search(block)
        if default:
            arg.default = default.group(1).strip()
        inline = POSSIBLE_INLINE_RE.search(block)
        if inline:
            arg.possible = [v.strip() for v in inline.group(1).split(",") if v.strip()]
        else:
            in_list = False
            for line in lines:
                if line.strip().lower().startswith("possible values:"):
                    in_list = True
                    continue
                if in_list:
                    item = POSSIBLE_ITEM_RE.match(line)
                    if item:
                        arg.possible.append(item.group(1))
        args[arg.env] = arg
    return args


def clean_env() -> dict[str, str]:
    """The environment without settings, so --help shows defaults and never secret values."""
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("INGEST_") or k == "RUST_LOG" or k.startswith("AWS_"))
    }


def load_binary(path: str) -> Binary:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SystemExit(f"check_manifests: {path}: not an executable file (build it first)")
    proc = subprocess.run(
        [path, "--help"], capture_output=True, text=True, env=clean_env(), timeout=30
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"check_manifests: `{path} --help` exited {proc.returncode}: {proc.stderr}"
        )
    args = parse_help(proc.stdout)
    if not args:
        raise SystemExit(f"check_manifests: `{path} --help` lists no [env: ...] variables")
    with open(path, "rb") as f:
        blob = f.read()
    return Binary(path, args, blob)


# ---------------------------------------------------------------------------------------------
# manifests


def port_of(address: str) -> int | None:
    m = re.search(r":(\d+)$", address.strip())
    return int(m.group(1)) if m else None


def host_of(address: str) -> str:
    return address.strip().rsplit(":", 1)[0].strip("[]")


def render(target: str, kubectl: str) -> tuple[str, list[dict]]:
    if target == "-":
        text = sys.stdin.read()
    elif os.path.isdir(target):
        proc = subprocess.run([kubectl, "kustomize", target], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"check_manifests: kubectl kustomize {target} failed:\n{proc.stderr}")
        text = proc.stdout
    else:
        with open(target) as f:
            text = f.read()
    return target, [d for d in yaml.safe_load_all(text) if d]


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    if kind in WORKLOAD_KINDS:
        return (spec.get("template") or {}).get("spec")
    return None


def pod_labels(obj: dict) -> dict:
    if obj.get("kind") == "Pod":
        return obj.get("metadata", {}).get("labels") or {}
    return ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def index(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d.get("kind", ""), d.get("metadata", {}).get("name", "")): d for d in docs}


def resolve_port(container: dict, port: object) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return int(port) if isinstance(port, str) and port.isdigit() else None


def effective_env(
    container: dict, objs: dict, where: str, report: Report
) -> tuple[list[tuple[str, str]], dict[str, str | None]]:
    """(name, source) of every variable, and the resulting values (None when from valueFrom)."""
    names: list[tuple[str, str]] = []
    values: dict[str, str | None] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = src.get(key)
            if ref is None:
                continue
            obj = objs.get((kind, ref.get("name", "")))
            if obj is None:
                report.check(
                    bool(ref.get("optional")), where, f"envFrom {kind} {ref.get('name')} not found"
                )
                continue
            data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
            for k, v in data.items():
                names.append((prefix + k, f"{kind} {ref['name']}"))
                values[prefix + k] = v
    for e in container.get("env") or []:
        names.append((e["name"], "env"))
        values[e["name"]] = str(e["value"]) if "value" in e else None
    return names, values


def check_container(
    container: dict,
    spec: dict,
    binary: Binary,
    role: Role,
    objs: dict,
    docs: list[dict],
    report: Report,
    where: str,
) -> None:
    names, env = effective_env(container, objs, where, report)

    # Every variable is one the binary accepts.
    for name, source in names:
        if name in FORBIDDEN_ENV:
            report.check(False, where, f"{name} ({source}): AWS keys do not belong in manifests")
        elif LIBRARY_ENV.match(name):
            report.checks += 1
        else:
            report.check(
                name in binary.args,
                where,
                f"{name} ({source}) is not accepted by {os.path.basename(binary.path)} "
                f"(not in its --help)",
            )
    for name, value in env.items():
        arg = binary.args.get(name)
        if arg and arg.possible and value is not None:
            report.check(
                value in arg.possible,
                where,
                f"{name}={value!r} is not one of {', '.join(arg.possible)}",
            )

    # Ports: container port == default listen port == the port the listen variable binds.
    default_port = binary.default_port(role.listen_env)
    if report.check(
        default_port is not None,
        where,
        f"no [default: ...] for {role.listen_env} in {os.path.basename(binary.path)} --help",
    ):
        port = resolve_port(container, role.port_name)
        report.check(
            port == default_port,
            where,
            f"container port {role.port_name!r} is {port}, the binary's default is {default_port}",
        )
        listen = env.get(role.listen_env)
        if report.check(
            listen is not None, where, f"{role.listen_env} must be set (the default is loopback)"
        ):
            report.check(
                port_of(listen) == default_port,
                where,
                f"{role.listen_env}={listen} does not bind port {default_port}",
            )
            report.check(
                host_of(listen) in ("0.0.0.0", "::"),
                where,
                f"{role.listen_env}={listen} must bind all interfaces in a pod",
            )

    # Probes.
    live = container.get("livenessProbe") or {}
    ready = container.get("readinessProbe") or {}
    if role is EDGE:
        for probe, kind, path in ((live, "liveness", "/livez"), (ready, "readiness", "/readyz")):
            get = probe.get("httpGet")
            if report.check(get is not None, where, f"{kind} probe must be httpGet {path}"):
                report.check(
                    get.get("path") == path, where, f"{kind} path is {get.get('path')}, not {path}"
                )
                report.check(
                    resolve_port(container, get.get("port")) == default_port,
                    where,
                    f"{kind} probe port {get.get('port')} is not the listen port",
                )
            report.check(
                path.encode() in binary.blob, where, f"{binary.path} has no route {path}"
            )
    elif env.get("INGEST_GRPC_TLS_CERT") is not None:
        get = ready.get("httpGet")
        admin = env.get("INGEST_ADMIN_LISTEN")
        if report.check(
            get is not None,
            where,
            "with TLS on the gRPC port the readiness probe must be httpGet /readyz on the admin "
            "port (the kubelet's grpc probe cannot do TLS)",
        ):
            report.check(
                get.get("path") == "/readyz", where, f"readiness path is {get.get('path')}, not /readyz"
            )
            report.check(
                admin is not None and resolve_port(container, get.get("port")) == port_of(admin),
                where,
                f"readiness probe port {get.get('port')} is not the admin port ({admin})",
            )
        report.check(b"/readyz" in binary.blob, where, f"{binary.path} has no route /readyz")
    else:
        grpc = ready.get("grpc")
        if report.check(grpc is not None, where, "readiness probe must be a native grpc probe"):
            report.check(
                grpc.get("port") == default_port,
                where,
                f"grpc probe port {grpc.get('port')} is not the listen port",
            )
            service = grpc.get("service")
            if service:
                report.check(
                    service.encode() in binary.blob,
                    where,
                    f"grpc probe service {service!r} not found in {binary.path}",
                )
    if role is CORE:
        report.check(
            b"grpc.health.v1" in binary.blob, where, f"{binary.path} does not serve grpc.health.v1"
        )
        report.check(bool(live), where, "liveness probe missing")
        for key in ("grpc", "tcpSocket", "httpGet"):
            if key in live:
                report.check(
                    resolve_port(container, live[key].get("port")) == default_port,
                    where,
                    f"liveness probe port {live[key].get('port')} is not the listen port",
                )

    # The edge reaches the core through a headless Service that selects the core pods.
    if role is EDGE and (env.get("INGEST_EMBEDDED_CORE") or "false").lower() not in ("true", "1"):
        url = env.get("INGEST_CORE_URL")
        if report.check(url is not None, where, "INGEST_CORE_URL must be set"):
            check_core_url(url, docs, objs, report, where)

    # *_FILE variables name keys of a mounted Secret.
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for name, value in env.items():
        if not (name.endswith("_FILE") or name in PATH_SETTINGS) or value is None:
            continue
        directory, key = os.path.dirname(value), os.path.basename(value)
        volume = volumes.get(mounts.get(directory, ""))
        if not report.check(
            volume is not None and "secret" in volume,
            where,
            f"{name}={value}: no Secret volume mounted at {directory}",
        ):
            continue
        secret = objs.get(("Secret", volume["secret"].get("secretName", "")))
        items = [i["path"] for i in volume["secret"].get("items") or []]
        issued = certificate_for(docs, volume["secret"].get("secretName", ""))
        if items:
            report.check(key in items, where, f"{name}={value}: {key} is not projected")
        elif secret is not None:
            keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
            report.check(key in keys, where, f"{name}={value}: Secret has no key {key}")
        elif report.check(
            issued is not None,
            where,
            f"{name}={value}: Secret {volume['secret'].get('secretName')} is neither in the "
            "manifests nor issued by a cert-manager Certificate",
        ):
            report.check(
                key in CERT_MANAGER_KEYS,
                where,
                f"{name}={value}: a cert-manager Secret has only {sorted(CERT_MANAGER_KEYS)}",
            )

    # Shutdown: the pause and the drain both fit in the grace period.
    sleep = (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get(
        "seconds", 0
    )
    grace_env = env.get("INGEST_SHUTDOWN_GRACE_SECS")
    if grace_env is None:
        grace_env = (binary.args.get("INGEST_SHUTDOWN_GRACE_SECS") or CliArg("")).default
    tgps = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD)
    if report.check(grace_env is not None, where, "INGEST_SHUTDOWN_GRACE_SECS unknown"):
        report.check(
            sleep + int(grace_env) < tgps,
            where,
            f"preStop sleep {sleep}s + INGEST_SHUTDOWN_GRACE_SECS {grace_env}s must be < "
            f"terminationGracePeriodSeconds {tgps}s",
        )

    # Strict securityContext (container settings, or the pod's where Kubernetes inherits them).
    pod_sc = spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    report.check(
        sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where, "runAsNonRoot"
    )
    report.check(sc.get("readOnlyRootFilesystem") is True, where, "readOnlyRootFilesystem")
    report.check(sc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation")
    report.check(
        "ALL" in ((sc.get("capabilities") or {}).get("drop") or []), where, "capabilities drop ALL"
    )
    report.check(not sc.get("privileged"), where, "privileged")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    report.check(seccomp == "RuntimeDefault", where, f"seccompProfile is {seccomp}")


def certificate_for(docs: list[dict], secret_name: str) -> dict | None:
    """The cert-manager Certificate that issues the Secret `secret_name`, if any."""
    for d in docs:
        if (
            d.get("kind") == "Certificate"
            and d.get("apiVersion") == "cert-manager.io/v1"
            and (d.get("spec") or {}).get("secretName") == secret_name
        ):
            return d
    return None


def secret_behind(container: dict, spec: dict, path: str | None) -> str | None:
    """The name of the Secret mounted where `path` lives, if any."""
    if path is None:
        return None
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    volume = volumes.get(mounts.get(os.path.dirname(path), "")) or {}
    return (volume.get("secret") or {}).get("secretName")


def truthy(value: str | None) -> bool:
    return (value or "false").strip().lower() in ("true", "1", "yes", "on")


def find_container(docs: list[dict], role: Role) -> tuple[dict, dict] | None:
    for d in docs:
        spec = pod_spec(d)
        for c in (spec or {}).get("containers") or []:
            if c.get("name") == role.name:
                return c, spec
    return None


def check_grpc_security(name: str, docs: list[dict], objs: dict, report: Report) -> None:
    """The core's gRPC credentials, and the edge's settings that must match them."""
    core, edge = find_container(docs, CORE), find_container(docs, EDGE)
    if core is None or edge is None:
        return
    where = f"{name}: internal gRPC"
    scratch = Report()  # env problems are reported by check_container already
    _, core_env = effective_env(core[0], objs, where, scratch)
    _, edge_env = effective_env(edge[0], objs, where, scratch)
    listen = core_env.get("INGEST_GRPC_LISTEN") or ""
    tls = core_env.get("INGEST_GRPC_TLS_CERT") is not None
    mtls = core_env.get("INGEST_GRPC_TLS_CLIENT_CA") is not None
    tokens = any(
        core_env.get(k) is not None for k in ("INGEST_GRPC_TOKENS_FILE", "INGEST_GRPC_TOKENS")
    )
    insecure = truthy(core_env.get("INGEST_GRPC_INSECURE"))
    public = any(d.get("kind") == "Ingress" for d in docs)
    loopback = host_of(listen) in ("127.0.0.1", "::1", "localhost")
    report.check(
        loopback or mtls or tokens or insecure,
        where,
        f"INGEST_GRPC_LISTEN={listen} without INGEST_GRPC_TLS_CLIENT_CA or INGEST_GRPC_TOKENS_FILE: "
        "the core refuses to start (set INGEST_GRPC_INSECURE=true only for development)",
    )
    report.check(
        not (insecure and public),
        where,
        "INGEST_GRPC_INSECURE=true in an overlay with a public Ingress",
    )
    report.check(
        not public or (tls and (mtls or tokens)),
        where,
        "an overlay with a public Ingress must run the core's gRPC with TLS and credentials",
    )
    if truthy(edge_env.get("INGEST_EMBEDDED_CORE")):
        return
    url = edge_env.get("INGEST_CORE_URL") or ""
    https = url.startswith("https://")
    report.check(
        https == tls,
        where,
        f"INGEST_CORE_URL={url} must be {'https' if tls else 'http'}:// "
        f"(the core's gRPC has TLS {'on' if tls else 'off'})",
    )
    if tls:
        report.check(
            edge_env.get("INGEST_CORE_TLS_CA") is not None,
            where,
            "the edge needs INGEST_CORE_TLS_CA to trust the core's certificate",
        )
    if mtls:
        report.check(
            edge_env.get("INGEST_CORE_TLS_CERT") is not None
            and edge_env.get("INGEST_CORE_TLS_KEY") is not None,
            where,
            "the core requires client certificates: the edge needs INGEST_CORE_TLS_CERT and "
            "INGEST_CORE_TLS_KEY",
        )
    if tokens:
        report.check(
            edge_env.get("INGEST_CORE_TOKEN_FILE") is not None
            or edge_env.get("INGEST_CORE_TOKEN") is not None,
            where,
            "the core requires tokens: the edge needs INGEST_CORE_TOKEN_FILE",
        )
    # cert-manager: the names and usages each side relies on.
    server = certificate_for(
        docs, secret_behind(*core, core_env.get("INGEST_GRPC_TLS_CERT")) or ""
    )
    if server is not None:
        sspec = server.get("spec") or {}
        report.check(
            "server auth" in (sspec.get("usages") or ["server auth"]),
            where,
            f"Certificate {server['metadata']['name']} must allow server auth",
        )
        expected = edge_env.get("INGEST_CORE_TLS_SERVER_NAME") or urlsplit(url).hostname
        report.check(
            expected in (sspec.get("dnsNames") or []),
            where,
            f"Certificate {server['metadata']['name']} does not name {expected!r}, the name the "
            "edge checks (INGEST_CORE_TLS_SERVER_NAME or the host of INGEST_CORE_URL)",
        )
    client = certificate_for(
        docs, secret_behind(*edge, edge_env.get("INGEST_CORE_TLS_CERT")) or ""
    )
    if client is not None:
        cspec = client.get("spec") or {}
        report.check(
            "client auth" in (cspec.get("usages") or []),
            where,
            f"Certificate {client['metadata']['name']} must have the usage `client auth`",
        )
        if server is not None and mtls:
            report.check(
                cspec.get("issuerRef") == (server.get("spec") or {}).get("issuerRef"),
                where,
                "the edge's and the core's Certificates must come from the same issuer (the core "
                "trusts client certificates that chain to its own Secret's ca.crt)",
            )


def check_core_url(url: str, docs: list[dict], objs: dict, report: Report, where: str) -> None:
    parts = urlsplit(url)
    service_name = (parts.hostname or "").split(".")[0]
    svc = objs.get(("Service", service_name))
    if not report.check(
        svc is not None, where, f"INGEST_CORE_URL={url}: no Service {service_name}"
    ):
        return
    spec = svc.get("spec") or {}
    report.check(
        spec.get("clusterIP") == "None",
        where,
        f"Service {service_name} must be headless (clusterIP: None) for client-side balancing",
    )
    selector = spec.get("selector") or {}
    cores = [
        d
        for d in docs
        if pod_spec(d)
        and any(c.get("name") == CORE.name for c in pod_spec(d).get("containers") or [])
    ]
    if not report.check(bool(cores), where, "no ingest-core workload"):
        return
    core = cores[0]
    report.check(
        bool(selector) and all(pod_labels(core).get(k) == v for k, v in selector.items()),
        where,
        f"Service {service_name} selector {selector} does not select the core pods",
    )
    container = next(c for c in pod_spec(core)["containers"] if c.get("name") == CORE.name)
    svc_port = next((p for p in spec.get("ports") or [] if p.get("port") == parts.port), None)
    if report.check(
        svc_port is not None, where, f"Service {service_name} has no port {parts.port}"
    ):
        target = resolve_port(container, svc_port.get("targetPort", svc_port.get("port")))
        report.check(
            target == resolve_port(container, CORE.port_name),
            where,
            f"Service {service_name} port {parts.port} does not reach the core's gRPC port",
        )


def check_target(
    target: str, kubectl: str, binaries: dict[str, Binary], report: Report
) -> None:
    name, docs = render(target, kubectl)
    objs = index(docs)
    for d in docs:
        api = d.get("apiVersion", "")
        report.check(
            api in ALLOWED_API_VERSIONS,
            f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}",
            f"apiVersion {api} is not a current API version",
        )
    seen = set()
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"{name}: {d['kind']}/{d['metadata']['name']}/{c.get('name')}"
            role = ROLES.get(c.get("name", ""))
            if not report.check(
                role is not None, where, "container is neither http-edge nor ingest-core"
            ):
                continue
            seen.add(role.name)
            check_container(c, spec, binaries[role.name], role, objs, docs, report, where)
    report.check(seen == set(ROLES), name, f"expected both workloads, found {sorted(seen)}")
    check_grpc_security(name, docs, objs, report)


# ---------------------------------------------------------------------------------------------
# --live: ask the running binaries what the probes ask


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_health_check(port: int, service: str = "", timeout: float = 2.0) -> int | None:
    """grpc.health.v1.Health/Check over cleartext HTTP/2; the status (1 = SERVING) or None."""

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        header = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
        return header + struct.pack(">I", stream) + payload

    def literal(name: str, value: str) -> bytes:  # HPACK literal without indexing, no Huffman
        n, v = name.encode(), value.encode()
        assert len(n) < 127 and len(v) < 127
        return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v

    headers = b"".join(
        literal(k, v)
        for k, v in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    request = service.encode()
    message = (b"\x0a" + bytes([len(request)]) + request) if request else b""
    body = b"\x00" + struct.pack(">I", len(message)) + message
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                + frame(0x4, 0, 0, b"")  # SETTINGS
                + frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS
                + frame(0x0, 0x1, 1, body)  # DATA, END_STREAM
            )
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    payload, buf = buf[9 : 9 + length], buf[9 + length :]
                    if kind == 0x4 and not flags & 0x1:
                        s.sendall(frame(0x4, 0x1, 0, b""))  # SETTINGS ack
                    elif kind == 0x0 and len(payload) >= 5:
                        msg = payload[5:]
                        # HealthCheckResponse { status = 1 } ; an absent field is UNKNOWN (0).
                        return msg[1] if len(msg) >= 2 and msg[0] == 0x08 else 0
                    elif kind == 0x3 or kind == 0x7:  # RST_STREAM, GOAWAY
                        return None
    except OSError:
        return None
    return None


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return None


def wait_for(what, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.25)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_live(edge: Binary, core: Binary, report: Report) -> None:
    tmp = tempfile.mkdtemp(prefix="check-manifests-")
    procs: list[subprocess.Popen] = []
    try:
        core_port, core_admin = free_port(), free_port()
        env = clean_env() | {
            "INGEST_GRPC_LISTEN": f"127.0.0.1:{core_port}",
            "INGEST_ADMIN_LISTEN": f"127.0.0.1:{core_admin}",
            "INGEST_DATA_DIR": os.path.join(tmp, "core"),
        }
        log = open(os.path.join(tmp, "core.log"), "w")
        procs.append(subprocess.Popen([core.path], env=env, stdout=log, stderr=log))
        ok = wait_for(lambda: grpc_health_check(core_port) == 1)
        report.check(ok, "live ingest-core", "grpc.health.v1 Check never answered SERVING"
                     + tail(os.path.join(tmp, "core.log")))
        for path in ("/livez", "/readyz"):
            ok = wait_for(lambda: http_status(f"http://127.0.0.1:{core_admin}{path}") == 200)
            report.check(ok, "live ingest-core", f"admin GET {path} never answered 200"
                         + tail(os.path.join(tmp, "core.log")))

        # Fail closed: on all interfaces without gRPC credentials the core must not start.
        env = clean_env() | {
            "INGEST_GRPC_LISTEN": f"0.0.0.0:{free_port()}",
            "INGEST_DATA_DIR": os.path.join(tmp, "open"),
        }
        try:
            refused = subprocess.run(
                [core.path], env=env, capture_output=True, text=True, timeout=30
            )
            report.check(
                refused.returncode == 64 and "--grpc-insecure" in refused.stderr,
                "live ingest-core",
                f"on 0.0.0.0 without credentials it must exit 64, got {refused.returncode}: "
                f"{refused.stderr[-300:]}",
            )
        except subprocess.TimeoutExpired:
            report.check(False, "live ingest-core", "started on 0.0.0.0 without credentials")

        edge_port, embedded_port = free_port(), free_port()
        env = clean_env() | {
            "INGEST_LISTEN": f"127.0.0.1:{edge_port}",
            "INGEST_EMBEDDED_CORE": "true",
            "INGEST_GRPC_LISTEN": f"127.0.0.1:{embedded_port}",
            "INGEST_CORE_URL": f"http://127.0.0.1:{embedded_port}",
            "INGEST_DATA_DIR": os.path.join(tmp, "edge"),
            "INGEST_INSECURE_SKIP_VERIFY": "true",
        }
        log = open(os.path.join(tmp, "edge.log"), "w")
        procs.append(subprocess.Popen([edge.path], env=env, stdout=log, stderr=log))
        base = f"http://127.0.0.1:{edge_port}"
        for path in ("/livez", "/readyz"):
            ok = wait_for(lambda: http_status(base + path) == 200)
            report.check(ok, "live http-edge", f"GET {path} never answered 200"
                         + tail(os.path.join(tmp, "edge.log")))
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path) as f:
            last = f.read().splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    | {line}" for line in last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge-bin", required=True, help="path to the http-edge binary")
    parser.add_argument("--core-bin", required=True, help="path to the ingest-core binary")
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"))
    parser.add_argument("--live", action="store_true", help="also run the binaries and probe them")
    parser.add_argument("targets", nargs="+", metavar="TARGET")
    opts = parser.parse_args()

    binaries = {EDGE.name: load_binary(opts.edge_bin), CORE.name: load_binary(opts.core_bin)}
    report = Report()
    for target in opts.targets:
        check_target(target, opts.kubectl, binaries, report)
    if opts.live:
        check_live(binaries[EDGE.name], binaries[CORE.name], report)

    for error in report.errors:
        print(f"FAIL {error}")
    verdict = "FAILED" if report.errors else "ok"
    print(
        f"check_manifests: {verdict}: {report.checks} checks, {len(report.errors)} failures, "
        f"{len(opts.targets)} target(s){', live probes' if opts.live else ''}"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
