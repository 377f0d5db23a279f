#!/usr/bin/env python3
"""Offline checks of the cluster packaging (deploy/): run by scripts/check-manifests.sh.

Requires (pinned in scripts/check-manifests.sh, installed into .cache/manifests-venv):
kubernetes-validate 1.37.0 (the Kubernetes OpenAPI schemas of 1.25-1.37, shipped in the
package), jsonschema 4.26.0, PyYAML 6.0.3.

1. Schemas. Every document under deploy/k8s: core Kubernetes kinds against the official
   Kubernetes schemas in strict mode (an unknown field is an error) for each version of
   K8S_VERSIONS; the Gateway API Inference Extension kinds against deploy/schema/ (written from
   the extension's API reference, unknown fields are errors there too).
2. Kustomizations: every listed resource exists, every manifest is listed, no transformation the
   cross-checks do not model (name prefixes, patches...).
3. Cross-checks, per top-level kustomization (one deployable set each), against the server's and
   the library's sources rather than a second list: probe paths are routes of
   examples/go/openai-server/server.go (readiness on the readiness handler, liveness on the
   liveness one); every LPX_*/NIM_* name set in the ConfigMap, the Deployment or the Dockerfile
   is read by src/config.rs or the server; InferencePool selectors match the pod labels and
   target ports the container port (and LPX_LISTEN's); every poolRef names a pool of the set;
   terminationGracePeriodSeconds exceeds preStop sleep + LPX_DRAIN_TIMEOUT + the server's
   shutdown wait (drain.go); non-root user in the image and runAsNonRoot in the pod; the model
   and PEFT paths lie on read-only mounts of shared (ReadOnlyMany / ReadWriteMany) volumes.
4. Dockerfile: numeric non-root USER, COPY sources that exist in the build context, `cd` targets
   that exist, ENV names the server reads, pinned base images.
5. Capacity (--plan-server BIN --model-dir DIR): the server's `-plan` run with the environment
   a replica gets (ConfigMap, env, LPX_THREADS from the CPU limit; the model path mapped from its
   mount onto DIR) must say the configuration fits its memory budget, which must fit the memory
   limit.
6. Self-test (--self-test): deliberately broken copies of the manifests (made in memory) must
   each be rejected with the expected complaint, so the check above cannot pass vacuously.

Prints one line per finding and ends with "manifests: N passed, M failed". Exit 0 when clean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = "deploy/k8s"
DOCKERFILE = "deploy/Dockerfile"
DOCKERIGNORE = ".dockerignore"
SCHEMA_DIR = ROOT / "deploy" / "schema"
# The oldest Kubernetes minor these manifests target and the newest the pinned package knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
IE_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")
# poolRef.group defaults, per referring kind (the CRDs' defaults).
POOLREF_DEFAULT_GROUP = {
    "InferenceObjective": "inference.networking.k8s.io",
    "InferenceModel": "inference.networking.x-k8s.io",
}
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "images"}
SHARED_ACCESS = {"ReadOnlyMany", "ReadWriteMany"}
ENV_NAME = re.compile(r'"((?:LPX|NIM)_[A-Z0-9_]+)"')


# ---------------------------------------------------------------- facts from the sources


@dataclass
class ServerFacts:
    """What the server and the library actually do, read from their sources."""

    routes: dict[str, str]  # path -> handler name (s.ready, s.live, ...)
    env_names: set[str]  # LPX_*/NIM_* names read by src/config.rs or the server
    drain_default: int  # LPX_DRAIN_TIMEOUT's default, seconds
    shutdown_wait: int  # seconds srv.Shutdown may take after the drain


def server_facts() -> ServerFacts:
    srv_dir = ROOT / "examples/go/openai-server"
    server_go = (srv_dir / "server.go").read_text()
    routes = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r'HandleFunc\("(/[^"]*)",\s*method\(http\.MethodGet,\s*s\.(\w+)\)', server_go
        )
    }
    if not routes:
        raise SystemExit("check_manifests: found no GET routes in server.go")
    config_rs = (ROOT / "src/config.rs").read_text().split("#[cfg(test)]")[0]
    names = set(ENV_NAME.findall(config_rs))
    go_sources = [p for p in sorted(srv_dir.glob("*.go")) if not p.name.endswith("_test.go")]
    for p in go_sources:
        names |= set(ENV_NAME.findall(p.read_text()))
    main_go = (srv_dir / "main.go").read_text()
    m = re.search(r'envOr\("LPX_DRAIN_TIMEOUT",\s*"(\d+)"\)', main_go)
    if not m or "LPX_MODEL" not in names:
        raise SystemExit("check_manifests: cannot read the server's configuration names")
    drain_go = (srv_dir / "drain.go").read_text()
    w = re.search(r"WithTimeout\(context\.Background\(\),\s*(\d*)\s*\*?\s*time\.Second\)", drain_go)
    if not w:
        raise SystemExit("check_manifests: cannot read the shutdown wait from drain.go")
    return ServerFacts(routes, names, int(m.group(1)), int(w.group(1) or 1))


# ---------------------------------------------------------------- the files under check


def load_tree() -> dict[str, str]:
    """The checked files as {repository-relative path: text}; the self-test mutates copies."""
    tree = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / K8S_DIR).rglob("*.yaml"))}
    tree.update({p: (ROOT / p).read_text() for p in (DOCKERFILE, DOCKERIGNORE)})
    return tree


@dataclass
class Doc:
    path: str
    doc: dict

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "?")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "?")

    def where(self) -> str:
        return f"{self.path}: {self.kind}/{self.name}"


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    passed: int = 0
    notes: list[str] = field(default_factory=list)  # what was measured, printed for a clean run

    def check(self, ok: bool, message: str) -> bool:
        if ok:
            self.passed += 1
        elif message not in self.errors:  # base/ is checked once per set that includes it
            self.errors.append(message)
        return ok


def ie_schemas() -> tuple[Registry, dict[tuple[str, str], dict]]:
    """deploy/schema/*.schema.json, keyed by (kind in lower case, API version)."""
    registry = Registry()
    by_kind = {}
    for p in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(p.read_text())
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
        kind, _, version = p.name.removesuffix(".schema.json").partition(".")
        if version:
            by_kind[(kind, version)] = schema
    return registry, by_kind


def path_of(err: jsonschema.ValidationError) -> str:
    return "/".join(str(x) for x in err.absolute_path) or "(top)"


def validate_schema(d: Doc, rep: Report, registry: Registry, schemas: dict) -> None:
    api = d.doc.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    if group in IE_GROUPS:
        schema = schemas.get((d.kind.lower(), version))
        if not rep.check(schema is not None, f"{d.where()}: no schema for {api} {d.kind} in deploy/schema"):
            return
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        errs = sorted(validator.iter_errors(d.doc), key=lambda e: list(e.absolute_path))
        for e in errs:
            rep.check(False, f"{d.where()}: {path_of(e)}: {e.message}")
        if not errs:
            rep.passed += 1
        return
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(d.doc, v, strict=True)
            rep.passed += 1
        except SchemaNotFoundError:
            rep.check(False, f"{d.where()}: Kubernetes {v} has no schema for {api} {d.kind}")
        except jsonschema.ValidationError as e:
            rep.check(False, f"{d.where()}: Kubernetes {v}: {path_of(e)}: {e.message}")


# ---------------------------------------------------------------- kustomizations


def kustomize_sets(docs: list[Doc], rep: Report) -> dict[str, list[Doc]]:
    """Resolves every kustomization; returns {top-level kustomization dir: its documents}."""
    by_file: dict[str, list[Doc]] = {}
    for d in docs:
        by_file.setdefault(d.path, []).append(d)
    kust = {str(PurePosixPath(p).parent): ds[0] for p, ds in by_file.items()
            if PurePosixPath(p).name == "kustomization.yaml"}
    referenced_dirs: set[str] = set()
    listed_files: set[str] = set()
    resolved: dict[str, list[Doc]] = {}

    def resolve(kdir: str, stack: tuple[str, ...]) -> list[Doc]:
        if kdir in resolved:
            return resolved[kdir]
        k = kust[kdir]
        out: list[Doc] = []
        extra = set(k.doc) - KUSTOMIZE_FIELDS
        rep.check(not extra, f"{k.path}: fields {sorted(extra)} are not modelled by this check "
                             f"(allowed: {sorted(KUSTOMIZE_FIELDS)})")
        rep.check(k.doc.get("apiVersion") == "kustomize.config.k8s.io/v1beta1",
                  f"{k.path}: apiVersion must be kustomize.config.k8s.io/v1beta1")
        for res in k.doc.get("resources") or []:
            target = str(PurePosixPath(kdir, res))
            target = str(PurePosixPath(*_normalise(PurePosixPath(target).parts)))
            if target in kust:
                if not rep.check(target not in stack, f"{k.path}: cycle through {res}"):
                    continue
                referenced_dirs.add(target)
                out += resolve(target, stack + (target,))
            elif target in by_file:
                rep.check(target.startswith(kdir + "/"),
                          f"{k.path}: file {res} lies outside the kustomization's directory "
                          "(kustomize refuses it; reference its directory)")
                listed_files.add(target)
                out += by_file[target]
            else:
                rep.check(False, f"{k.path}: resource {res} does not exist "
                                 "(a .yaml file or a directory with a kustomization.yaml)")
        resolved[kdir] = out
        return out

    for kdir in sorted(kust):
        resolve(kdir, (kdir,))
    for p in by_file:
        if PurePosixPath(p).name != "kustomization.yaml":
            rep.check(p in listed_files, f"{p}: not listed by any kustomization.yaml")
    return {kdir: resolved[kdir] for kdir in sorted(kust) if kdir not in referenced_dirs}


def _normalise(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        elif part not in (".", ""):
            out.append(part)
    return out


# ---------------------------------------------------------------- the Dockerfile


@dataclass
class DockerFacts:
    user: str | None
    expose: set[int]
    env: dict[str, str]
    stopsignal: str | None


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines, cur = [], ""
    for raw in text.splitlines():
        if not cur and (raw.strip().startswith("#") or not raw.strip()):
            continue
        if raw.strip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        lines.append(cur.strip())
        cur = ""
    out = []
    for line in lines:
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def check_dockerfile(tree: dict[str, str], facts: ServerFacts, rep: Report) -> DockerFacts:
    ins = dockerfile_instructions(tree[DOCKERFILE])
    ignored = {ln.strip().rstrip("/") for ln in tree[DOCKERIGNORE].splitlines()
               if ln.strip() and not ln.startswith("#")}
    args, stages = {}, set()
    user, expose, env, stop = None, set(), {}, None
    workdir_has_repo = False
    for op, rest in ins:
        if op == "ARG":
            k, _, v = rest.partition("=")
            args[k] = v
            if k.endswith("_IMAGE"):
                rep.check(bool(re.search(r":[^:@]*\d", v)) and not v.endswith(":latest"),
                          f"{DOCKERFILE}: ARG {k}={v} is not pinned to a versioned tag")
        elif op == "FROM":
            image, _, alias = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
            rep.check(bool(re.search(r":[^:@]*\d|@sha256:", image)),
                      f"{DOCKERFILE}: FROM {image} is not pinned")
            if alias:
                stages.add(alias.strip())
            user, workdir_has_repo = None, False
        elif op in ("COPY", "ADD"):
            words = rest.split()
            flags = [w for w in words if w.startswith("--")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            src_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if src_stage is not None:
                rep.check(src_stage in stages, f"{DOCKERFILE}: COPY --from={src_stage}: no such stage")
                continue
            workdir_has_repo = True
            for s in srcs:
                exists = (ROOT / s).exists()
                top = PurePosixPath(s).parts[0]
                rep.check(exists, f"{DOCKERFILE}: COPY {s}: no such file or directory in the repository")
                rep.check(top not in ignored and s not in ignored,
                          f"{DOCKERFILE}: COPY {s}: excluded from the build context by {DOCKERIGNORE}")
        elif op == "RUN" and workdir_has_repo:
            for m in re.finditer(r"\bcd\s+([\w./-]+)", rest):
                rep.check((ROOT / m.group(1)).is_dir(),
                          f"{DOCKERFILE}: RUN cd {m.group(1)}: no such directory in the repository")
        elif op == "USER":
            user = rest
        elif op == "EXPOSE":
            expose |= {int(p.split("/")[0]) for p in rest.split()}
        elif op == "ENV":
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[k] = v.strip('"')
        elif op == "STOPSIGNAL":
            stop = rest
    # The runtime stage is the last: its USER is the container's.
    uid = (user or "").split(":")[0]
    rep.check(uid.isdigit() and int(uid) != 0,
              f"{DOCKERFILE}: the final stage's USER must be a numeric non-root uid "
              f"(Kubernetes can only verify runAsNonRoot for numeric users), got {user!r}")
    rep.check(stop in (None, "SIGTERM"),
              f"{DOCKERFILE}: STOPSIGNAL {stop}: the server drains on SIGTERM")
    for k in env:
        if k.startswith(("LPX_", "NIM_")):
            rep.check(k in facts.env_names, f"{DOCKERFILE}: ENV {k} is read by neither the server "
                                             "nor the library")
    return DockerFacts(user, expose, env, stop)


# ---------------------------------------------------------------- cross-checks of one set


def _labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _probe_port(port, ports: dict[str, int]) -> int | None:
    return ports.get(port) if isinstance(port, str) else port


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q) -> float | None:
    """A Kubernetes resource quantity ("4Gi", "500m", 2) as a number; None when unparsable."""
    m = QUANTITY.match(str(q))
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


@dataclass
class Planner:
    """Runs `BIN -plan` with a replica's environment; results memoised by environment."""

    server: str
    model_dir: Path
    runs: dict[tuple, tuple[bool, str]] = field(default_factory=dict)

    def plan(self, env: dict[str, str]) -> tuple[bool, str]:
        key = tuple(sorted(env.items()))
        if key not in self.runs:
            with tempfile.TemporaryDirectory() as peft:
                # Only the replica's variables (and how to find the binary's libraries).
                run_env = {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH") if k in os.environ}
                run_env.update(env, NIM_PEFT_SOURCE=peft)
                r = subprocess.run([self.server, "-plan"], env=run_env, capture_output=True, text=True, timeout=120)
            if r.returncode not in (0, 3):
                self.runs[key] = (False, f"-plan failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
            else:
                p = json.loads(r.stdout)
                need, budget = p.get("required_bytes"), p["workload"].get("memory_budget_bytes")
                self.runs[key] = (p["fits"] and r.returncode == 0,
                                  f"fits={p['fits']} ({p.get('reason') or 'ok'}); needs {need} of "
                                  f"budget {budget} bytes")
        return self.runs[key]


def _prestop_sleep(lifecycle: dict) -> int | None:
    pre = (lifecycle or {}).get("preStop") or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and PurePosixPath(cmd[0]).name == "sleep" and str(cmd[1]).isdigit():
        return int(cmd[1])
    return None


def cross_check(kdir: str, docs: list[Doc], facts: ServerFacts, dfacts: DockerFacts, rep: Report,
                planner: Planner | None) -> None:
    where = f"{kdir}/kustomization.yaml"
    by_kind: dict[str, list[Doc]] = {}
    for d in docs:
        by_kind.setdefault(d.kind, []).append(d)
    seen = set()
    for d in docs:
        key = (d.doc.get("apiVersion"), d.kind, d.name)
        rep.check(key not in seen, f"{d.where()}: defined twice in {where}")
        seen.add(key)
    deps = by_kind.get("Deployment", [])
    if not rep.check(len(deps) == 1, f"{where}: expected one Deployment, found {len(deps)}"):
        return
    dep = deps[0]
    spec = dep.doc["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels") or {}
    rep.check(_labels_match(spec["selector"].get("matchLabels") or {}, labels),
              f"{dep.where()}: spec.selector does not match the pod template's labels")
    containers = pod["containers"]
    if not rep.check(len(containers) == 1, f"{dep.where()}: expected one container"):
        return
    c = containers[0]
    ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in c.get("ports") or []}
    port_numbers = set(ports.values())
    rep.check(bool(port_numbers), f"{dep.where()}: the container declares no port")

    # Environment: container env plus the ConfigMaps it loads.
    configmaps = {d.name: d for d in by_kind.get("ConfigMap", [])}
    env: dict[str, str] = {}
    for src in c.get("envFrom") or []:
        ref = (src.get("configMapRef") or {}).get("name")
        if ref is None:
            continue
        cm = configmaps.get(ref)
        if rep.check(cm is not None, f"{dep.where()}: envFrom ConfigMap {ref} is not in {where}"):
            for k, v in (cm.doc.get("data") or {}).items():
                rep.check(k in facts.env_names, f"{cm.where()}: {k} is read by neither the server "
                                                "nor the library (src/config.rs, examples/go/openai-server)")
                env[k] = v
    limits = (c.get("resources") or {}).get("limits") or {}
    for e in c.get("env") or []:
        rep.check(e["name"] in facts.env_names, f"{dep.where()}: env {e['name']} is read by neither "
                                                "the server nor the library")
        field_ref = (e.get("valueFrom") or {}).get("resourceFieldRef") or {}
        if field_ref.get("resource") == "limits.cpu":  # what the kubelet puts there: whole cores
            cpus = quantity(limits.get("cpu"))
            env[e["name"]] = str(math.ceil(cpus / quantity(field_ref.get("divisor", 1)))) if cpus else ""
        else:
            env[e["name"]] = e.get("value", "")
    merged = {**dfacts.env, **env}

    budget, mem = merged.get("LPX_MEMORY_BUDGET_BYTES", ""), quantity(limits.get("memory"))
    rep.check(mem is not None, f"{dep.where()}: the container needs a memory limit")
    rep.check(budget.isdigit() and int(budget) > 0 and mem is not None and int(budget) <= mem,
              f"{dep.where()}: LPX_MEMORY_BUDGET_BYTES={budget!r} must be set and within the "
              f"memory limit {limits.get('memory')}")

    listen = merged.get("LPX_LISTEN", "")
    lport = listen.rpartition(":")[2]
    rep.check(lport.isdigit() and int(lport) in port_numbers and not listen.startswith("127."),
              f"{dep.where()}: LPX_LISTEN={listen!r} must listen on all interfaces on the "
              f"container port {sorted(port_numbers)}")
    rep.check(port_numbers <= dfacts.expose,
              f"{dep.where()}: container ports {sorted(port_numbers)} not EXPOSEd by {DOCKERFILE} "
              f"({sorted(dfacts.expose)})")

    # Probes: real routes, and the right handler for each.
    want = {"startupProbe": None, "livenessProbe": "live", "readinessProbe": "ready"}
    for probe, handler in want.items():
        p = c.get(probe)
        if not rep.check(p is not None and "httpGet" in p, f"{dep.where()}: {probe} must be an httpGet probe"):
            continue
        path, port = p["httpGet"].get("path"), p["httpGet"].get("port")
        got = facts.routes.get(path)
        rep.check(got is not None, f"{dep.where()}: {probe} path {path} is not a GET route of "
                                   f"the server ({sorted(facts.routes)})")
        if handler is not None and got is not None:
            rep.check(got == handler, f"{dep.where()}: {probe} path {path} is served by s.{got}, "
                                      f"not the {handler} handler")
        rep.check(_probe_port(port, ports) in port_numbers,
                  f"{dep.where()}: {probe} port {port} is not a container port")

    # Termination: preStop sleep, then the drain, then the listener's shutdown wait.
    sleep = _prestop_sleep(c.get("lifecycle"))
    drain = merged.get("LPX_DRAIN_TIMEOUT", str(facts.drain_default))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if rep.check(sleep is not None, f"{dep.where()}: needs a preStop sleep (exec sleep N or sleep.seconds)") \
            and rep.check(drain.isdigit(), f"{dep.where()}: LPX_DRAIN_TIMEOUT={drain!r} is not seconds"):
        need = sleep + int(drain) + facts.shutdown_wait
        rep.check(grace > need, f"{dep.where()}: terminationGracePeriodSeconds {grace} must exceed "
                                f"preStop sleep {sleep} + LPX_DRAIN_TIMEOUT {drain} + shutdown "
                                f"{facts.shutdown_wait} = {need} s")

    # Security.
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    rep.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True,
              f"{dep.where()}: runAsNonRoot must be true")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    image_uid = (dfacts.user or "").split(":")[0]
    rep.check(uid is None or (uid != 0 and str(uid) == image_uid),
              f"{dep.where()}: runAsUser {uid} differs from the image's USER {dfacts.user}")
    rep.check(csc.get("readOnlyRootFilesystem") is True, f"{dep.where()}: readOnlyRootFilesystem must be true")
    rep.check(csc.get("allowPrivilegeEscalation") is False, f"{dep.where()}: allowPrivilegeEscalation must be false")
    rep.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []),
              f"{dep.where()}: capabilities must drop ALL")

    # Model and PEFT source on read-only mounts of shared claims.
    pvcs = {d.name: d for d in by_kind.get("PersistentVolumeClaim", [])}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}

    def on_shared_mount(var: str, path: str) -> None:
        mount = max((m for m in c.get("volumeMounts") or []
                     if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")),
                    key=lambda m: len(m["mountPath"]), default=None)
        if not rep.check(mount is not None, f"{dep.where()}: {var}={path} is on no volume mount"):
            return
        rep.check(mount.get("readOnly") is True, f"{dep.where()}: {var}: mount {mount['mountPath']} must be readOnly")
        claim = (volumes.get(mount["name"], {}).get("persistentVolumeClaim") or {}).get("claimName")
        if rep.check(claim in pvcs, f"{dep.where()}: {var}: volume {mount['name']} is not a "
                                    f"PersistentVolumeClaim of {where}"):
            modes = set(pvcs[claim].doc["spec"].get("accessModes") or [])
            rep.check(bool(modes & SHARED_ACCESS) or spec.get("replicas", 1) == 1,
                      f"{pvcs[claim].where()}: {var} is shared by {spec.get('replicas', 1)} replicas: "
                      f"accessModes {sorted(modes)} need ReadOnlyMany or ReadWriteMany")

    model = merged.get("LPX_MODEL", "")
    rep.check(model.startswith("/"), f"{dep.where()}: LPX_MODEL must be an absolute path, got {model!r}")
    if model.startswith("/"):
        on_shared_mount("LPX_MODEL", model)
    for src in filter(None, merged.get("NIM_PEFT_SOURCE", "").split(":")):
        on_shared_mount("NIM_PEFT_SOURCE", src)
    if planner is not None and model.startswith("/"):
        model_mount = max((m["mountPath"] for m in c.get("volumeMounts") or []
                           if model.startswith(m["mountPath"].rstrip("/") + "/")), key=len, default="/")
        local = planner.model_dir / os.path.relpath(model, model_mount)
        ci = os.environ.get("CI", "") in ("1", "true", "TRUE", "True")
        if not local.exists() and not ci:
            note = f"capacity plan skipped: {local} is missing (make model)"
            if note not in rep.notes:
                rep.notes.append(note)
        elif rep.check(local.exists(), f"{dep.where()}: LPX_MODEL={model}: {local} is missing for "
                                       "the capacity plan (make model)"):
            plan_env = {k: v for k, v in merged.items() if k.startswith(("LPX_", "NIM_")) and v}
            fits, what = planner.plan({**plan_env, "LPX_MODEL": str(local)})
            rep.check(fits, f"{dep.where()}: the capacity plan of this configuration does not fit: {what}")
            note = f"capacity plan ({dep.where()}, model {local.name}): {what}"
            if fits and note not in rep.notes:
                rep.notes.append(note)

    # Services and InferencePools select these pods on this port.
    for svc in by_kind.get("Service", []):
        rep.check(_labels_match(svc.doc["spec"].get("selector") or {}, labels),
                  f"{svc.where()}: selector does not match the Deployment's pod labels")
        for p in svc.doc["spec"].get("ports") or []:
            rep.check(_probe_port(p.get("targetPort", p["port"]), ports) in port_numbers,
                      f"{svc.where()}: targetPort {p.get('targetPort')} is not a container port")
    pools: dict[tuple[str, str], Doc] = {}
    for pool in by_kind.get("InferencePool", []):
        group = pool.doc["apiVersion"].rpartition("/")[0]
        pools[(group, pool.name)] = pool
        s = pool.doc["spec"]
        if "matchLabels" in (s.get("selector") or {}):  # v1
            sel, targets = s["selector"]["matchLabels"], [p["number"] for p in s.get("targetPorts", [])]
        else:  # v1alpha2
            sel, targets = s.get("selector") or {}, [s.get("targetPortNumber")]
        rep.check(_labels_match(sel, labels), f"{pool.where()}: selector {sel} does not match the "
                                              f"Deployment's pod labels {labels}")
        for t in targets:
            rep.check(t in port_numbers, f"{pool.where()}: target port {t} is not the container "
                                         f"port {sorted(port_numbers)}")
    for kind, default_group in POOLREF_DEFAULT_GROUP.items():
        for d in by_kind.get(kind, []):
            ref = d.doc["spec"].get("poolRef") or {}
            key = (ref.get("group", default_group), ref.get("name"))
            rep.check(ref.get("kind", "InferencePool") == "InferencePool" and key in pools,
                      f"{d.where()}: poolRef {key[0]}/{key[1]} names no InferencePool of {where} "
                      f"(pools: {sorted('/'.join(k) for k in pools)})")
    names = [d.doc["spec"].get("modelName") for d in by_kind.get("InferenceModel", [])]
    rep.check(len(names) == len(set(names)), f"{where}: InferenceModel modelNames repeat: {names}")


# ---------------------------------------------------------------- driver


def check(tree: dict[str, str], facts: ServerFacts, planner: Planner | None = None) -> Report:
    rep = Report()
    registry, schemas = ie_schemas()
    docs: list[Doc] = []
    for path, text in tree.items():
        if not path.endswith(".yaml"):
            continue
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            rep.check(False, f"{path}: not YAML: {e}")
            continue
        for i, d in enumerate(loaded):
            if d is None:
                continue
            if rep.check(isinstance(d, dict) and "kind" in d, f"{path}: document {i} is not a Kubernetes object"):
                docs.append(Doc(path, d))
    for d in docs:
        if d.kind != "Kustomization":
            validate_schema(d, rep, registry, schemas)
    dfacts = check_dockerfile(tree, facts, rep)
    if rep.errors:
        return rep  # cross-checks assume schema-valid documents
    for kdir, ds in kustomize_sets(docs, rep).items():
        cross_check(kdir, [d for d in ds if d.kind != "Kustomization"], facts, dfacts, rep, planner)
    return rep


# Broken copies the check must reject: (what, file, old text, new text, expected in a message).
MUTATIONS = [
    ("unknown Deployment field (core schema, strict)", "deploy/k8s/base/deployment.yaml",
     "readinessProbe:", "readinesProbe:", "'readinesProbe' was unexpected"),
    ("unknown InferencePool field (deploy/schema)", "deploy/k8s/pool/inferencepool.yaml",
     "  endpointPickerRef:", "  endpointPicker:", "'endpointPicker' was unexpected"),
    ("field of a later Inference Extension release", "deploy/k8s/pool/inferencepool.yaml",
     "  targetPorts:", "  appProtocol: http\n  targetPorts:", "'appProtocol' was unexpected"),
    ("invalid InferenceModel criticality", "deploy/k8s/legacy-v0.5/inferencemodels.yaml",
     "criticality: Sheddable", "criticality: Low", "Low"),
    ("InferenceObjective poolRef names no pool", "deploy/k8s/objectives/inferenceobjectives.yaml",
     "    name: loraplex\n", "    name: loraplex-pool\n", "poolRef"),
    ("InferenceObjective poolRef to the v1alpha2 group", "deploy/k8s/objectives/inferenceobjectives.yaml",
     "    group: inference.networking.k8s.io\n", "    group: inference.networking.x-k8s.io\n", "poolRef"),
    ("readiness probe on no route", "deploy/k8s/base/deployment.yaml",
     "path: /v1/health/ready", "path: /v1/health/readyz", "/v1/health/readyz"),
    ("liveness probe on the readiness route", "deploy/k8s/base/deployment.yaml",
     "path: /v1/health/live\n              port: http\n            periodSeconds: 10",
     "path: /v1/health/ready\n              port: http\n            periodSeconds: 10", "livenessProbe"),
    ("grace period shorter than preStop + drain", "deploy/k8s/base/deployment.yaml",
     "terminationGracePeriodSeconds: 90", "terminationGracePeriodSeconds: 65", "terminationGracePeriodSeconds"),
    ("configuration name nobody reads", "deploy/k8s/base/configmap.yaml",
     "LPX_MAX_NUM_SEQS:", "LPX_MAX_SEQS:", "LPX_MAX_SEQS"),
    ("pod allowed to run as root", "deploy/k8s/base/deployment.yaml",
     "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"),
    ("image runs as root", DOCKERFILE, "USER 65532:65532", "USER root", "USER"),
    ("Dockerfile copies a missing path", DOCKERFILE, "COPY src ./src", "COPY source ./src", "COPY source"),
    ("Dockerfile builds in a missing directory", DOCKERFILE, "RUN cd examples/go/openai-server",
     "RUN cd examples/openai-server", "RUN cd examples/openai-server"),
    ("Dockerfile copies what .dockerignore excludes", DOCKERIGNORE, "\ntarget\n", "\ntarget\ninclude\n", "excluded"),
    ("pool targets another port", "deploy/k8s/pool/inferencepool.yaml",
     "    - number: 8000", "    - number: 8080", "8080"),
    ("legacy pool selects other pods", "deploy/k8s/legacy-v0.5/inferencepool.yaml",
     "    app.kubernetes.io/component: openai-server", "    app.kubernetes.io/component: server", "selector"),
    ("model outside the model mount", "deploy/k8s/base/configmap.yaml",
     "LPX_MODEL: /models/", "LPX_MODEL: /model/", "LPX_MODEL"),
    ("PEFT source on a single-node volume", "deploy/k8s/base/storage.yaml",
     'accessModes: ["ReadWriteMany"]', 'accessModes: ["ReadWriteOnce"]', "ReadWriteMany"),
    ("manifest listed by no kustomization", "deploy/k8s/base/kustomization.yaml",
     "  - disruption.yaml\n", "", "not listed"),
    ("memory budget above the memory limit", "deploy/k8s/base/configmap.yaml",
     'LPX_MEMORY_BUDGET_BYTES: "3221225472"', 'LPX_MEMORY_BUDGET_BYTES: "5368709120"', "memory limit"),
]
# Only with --plan-server: a configuration whose capacity plan does not fit its budget.
PLAN_MUTATIONS = [
    ("workload that does not fit the memory budget", "deploy/k8s/base/configmap.yaml",
     'LPX_MAX_NUM_SEQS: "16"', 'LPX_MAX_NUM_SEQS: "64"', "fits=False"),
]


def self_test(tree: dict[str, str], facts: ServerFacts, planner: Planner | None, mutations: list) -> int:
    failures = 0
    for what, path, old, new, expect in mutations:
        if tree[path].count(old) < 1:
            print(f"SELF-TEST FAIL {what}: {old!r} not in {path} (mutation did not apply)")
            failures += 1
            continue
        broken = dict(tree)
        broken[path] = tree[path].replace(old, new, 1)
        errs = check(broken, facts, planner).errors
        hit = next((e for e in errs if expect in e), None)
        if hit is None:
            print(f"SELF-TEST FAIL {what}: not rejected as expected ({len(errs)} errors: {errs[:3]})")
            failures += 1
        else:
            print(f"rejected as expected: {what}: {hit}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--self-test", action="store_true", help="also check that broken copies are rejected")
    ap.add_argument("--plan-server", help="an openai-server binary: run its -plan on each configuration")
    ap.add_argument("--model-dir", default=str(ROOT / "models"),
                    help="local directory standing for the model volume's mount (default: models/)")
    args = ap.parse_args()
    facts = server_facts()
    tree = load_tree()
    planner = Planner(args.plan_server, Path(args.model_dir)) if args.plan_server else None
    rep = check(tree, facts, planner)
    for n in rep.notes:
        print(n)
    for e in rep.errors:
        print(f"ERROR {e}")
    ndocs = sum(1 for p in tree if p.endswith(".yaml"))
    print(f"manifests: {ndocs} YAML files under {K8S_DIR}, {DOCKERFILE}: {rep.passed} checks passed, "
          f"{len(rep.errors)} failed (Kubernetes {', '.join(K8S_VERSIONS)} strict; "
          f"routes {sorted(facts.routes)}; {len(facts.env_names)} configuration names)")
    passed, failed = (1 if not rep.errors else 0), (1 if rep.errors else 0)
    if args.self_test:
        # The plan's own broken copy only where the plan ran (it is skipped without the model).
        mutations = MUTATIONS + (PLAN_MUTATIONS if planner and planner.runs else [])
        bad = self_test(tree, facts, planner, mutations)
        print(f"self-test: {len(mutations) - bad} of {len(mutations)} broken copies rejected")
        passed += len(mutations) - bad
        failed += bad
    print(f"manifests: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
