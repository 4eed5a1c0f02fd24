"""Validates the rendered Kubernetes manifests of deploy/k8s's overlays (scripts/check-manifests
renders them with `kubectl kustomize` and calls this):

    check_manifests.py KUBERNETES_VERSION OVERLAY=RENDERED.yaml ...

Every object is validated strictly (unknown fields are errors) against the schemas that the PyPI
package kubernetes-validate ships for KUBERNETES_VERSION. The one custom resource, the
prometheus-operator's ServiceMonitor, has no schema there: its required fields are checked here.
Any other kind without a schema is an error. Then what each overlay must render is asserted:
the gateway StatefulSet with its arguments, environment, ports, probes and resources, the three
Services and what they select, the ConfigMap and its switchyard.toml (whose keys must all be
keys of config/switchyard.toml, as the gateway refuses unknown ones), the ServiceMonitor, the
HorizontalPodAutoscaler, the registry Secret; PostgreSQL for cpu and gpu, none for
external-postgres; the GPU request, image and budget for gpu.

Prints one line per overlay; exits 1 with every failure listed otherwise.
"""

import pathlib
import sys
import tomllib

import kubernetes_validate
import yaml

GATEWAY = "switchyard"
EXPECTED_ARGS = [
    "serve", "--config", "/etc/switchyard/switchyard.toml", "--cluster",
    "--node-id", "$(POD_NAME)",
    "--advertise", "$(POD_NAME).switchyard-peers.$(POD_NAMESPACE).svc.cluster.local:8001",
    "--admin-addr", "0.0.0.0:8080",
]
EXPECTED_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "admin": 8080}
# The gateway refuses unknown configuration keys; the embedded default lists every key there is
# ([[devices]], commented out there, takes these).
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "config" / "switchyard.toml"
DEVICE_KEYS = {"id", "memory", "reserve"}
# Custom resources this deployment uses, whose schemas kubernetes-validate does not have.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


class Overlay:
    def __init__(self, name, objects):
        self.name = name
        self.objects = objects
        self.failures = []
        self.config = None

    def fail(self, message):
        self.failures.append(f"{self.name}: {message}")

    def check(self, condition, message):
        if not condition:
            self.fail(message)
        return condition

    def find(self, kind, name=None, prefix=None):
        found = [o for o in self.objects if o.get("kind") == kind]
        if name is not None:
            found = [o for o in found if o["metadata"]["name"] == name]
        if prefix is not None:
            found = [o for o in found if o["metadata"]["name"].startswith(prefix)]
        return found

    def one(self, kind, name=None, prefix=None):
        found = self.find(kind, name=name, prefix=prefix)
        label = kind + (f" {name}" if name else "") + (f" {prefix}*" if prefix else "")
        if not self.check(len(found) == 1, f"expected one {label}, found {len(found)}"):
            return None
        return found[0]


def validate_schemas(overlay, version):
    custom = 0
    for obj in overlay.objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS:
            check_service_monitor(overlay, obj)
            custom += 1
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as error:
            overlay.fail(f"{where}: {error.message}")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "(top)"
            overlay.fail(f"{where}: {path}: {error.message}")
    return custom


def check_service_monitor(overlay, monitor):
    """The fields the prometheus-operator requires, and that the selected Service has the port."""
    name = monitor["metadata"].get("name")
    spec = monitor.get("spec")
    if not overlay.check(isinstance(spec, dict), f"ServiceMonitor {name}: no spec"):
        return
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel",
                           "targetLabels", "podTargetLabels", "sampleLimit"}
    overlay.check(not unknown, f"ServiceMonitor {name}: unknown spec fields {sorted(unknown)}")
    labels = (spec.get("selector") or {}).get("matchLabels")
    overlay.check(isinstance(labels, dict) and labels,
                  f"ServiceMonitor {name}: spec.selector.matchLabels must be a non-empty map")
    endpoints = spec.get("endpoints")
    if not overlay.check(isinstance(endpoints, list) and endpoints,
                         f"ServiceMonitor {name}: spec.endpoints must be a non-empty list"):
        return
    services = [s for s in overlay.find("Service")
                if isinstance(labels, dict) and labels
                and labels.items() <= (s["metadata"].get("labels") or {}).items()]
    overlay.check(len(services) == 1,
                  f"ServiceMonitor {name}: selects {len(services)} Services, expected 1")
    for endpoint in endpoints:
        unknown = set(endpoint) - {"port", "targetPort", "path", "scheme", "interval",
                                   "scrapeTimeout", "honorLabels", "relabelings",
                                   "metricRelabelings"}
        overlay.check(not unknown, f"ServiceMonitor {name}: unknown endpoint fields {sorted(unknown)}")
        port = endpoint.get("port")
        overlay.check(isinstance(port, str) and port,
                      f"ServiceMonitor {name}: every endpoint needs a port name")
        overlay.check(str(endpoint.get("path", "/metrics")).startswith("/"),
                      f"ServiceMonitor {name}: endpoint path must start with /")
        for service in services:
            names = [p.get("name") for p in service["spec"].get("ports", [])]
            overlay.check(port in names,
                          f"ServiceMonitor {name}: Service {service['metadata']['name']} "
                          f"has no port named {port!r}")


def container_port(container, port):
    """The number a probe's or Service's port (a name or a number) stands for."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_gateway(overlay, gpu):
    statefulset = overlay.one("StatefulSet", GATEWAY)
    if statefulset is None:
        return None
    spec = statefulset["spec"]
    overlay.check(spec.get("replicas") == 3, "switchyard StatefulSet: replicas must be 3")
    overlay.check(spec.get("serviceName") == "switchyard-peers",
                  "switchyard StatefulSet: serviceName must be switchyard-peers")
    pod = spec["template"]["spec"]
    containers = pod.get("containers", [])
    if not overlay.check(len(containers) == 1, "switchyard StatefulSet: expected one container"):
        return None
    container = containers[0]
    image = "switchyard:cuda" if gpu else "switchyard:cpu"
    overlay.check(container.get("image") == image, f"switchyard: image must be {image}, "
                  f"is {container.get('image')}")
    overlay.check(container.get("args") == EXPECTED_ARGS,
                  f"switchyard: args must be {' '.join(EXPECTED_ARGS)}")

    env = {e["name"]: e for e in container.get("env", [])}
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        ref = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        overlay.check(ref == field, f"switchyard: env {name} must come from {field}")
    for name, secret, key in (("SWITCHYARD_REGISTRY", "switchyard-registry", "url"),
                              ("SWITCHYARD_ADMIN_TOKEN", "switchyard-admin", "token")):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
        overlay.check(ref.get("name") == secret and ref.get("key") == key,
                      f"switchyard: env {name} must come from Secret {secret} key {key}")
        if not ref.get("optional"):
            overlay.check(overlay.find("Secret", secret),
                          f"switchyard: env {name} needs Secret {secret}, which is not rendered")

    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    overlay.check(ports == EXPECTED_PORTS, f"switchyard: ports must be {EXPECTED_PORTS}, are {ports}")

    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container.get(probe, {}).get("httpGet", {})
        overlay.check(get.get("path") == path, f"switchyard: {probe} must GET {path}")
        overlay.check(container_port(container, get.get("port")) == 8000,
                      f"switchyard: {probe} must go to port 8000")

    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            overlay.check(resource in resources.get(kind, {}),
                          f"switchyard: resources.{kind}.{resource} must be set")
    gpus = resources.get("limits", {}).get("nvidia.com/gpu")
    if gpu:
        overlay.check(str(gpus) == "1", "switchyard: limits must request nvidia.com/gpu: 1")
        overlay.check(pod.get("nodeSelector") or pod.get("tolerations"),
                      "switchyard: GPU pods need a nodeSelector or tolerations for GPU nodes")
    else:
        overlay.check(gpus is None, "switchyard: a CPU overlay must not request nvidia.com/gpu")

    # The configuration: the mounted ConfigMap exists and its switchyard.toml says what a
    # cluster member needs.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    mount = mounts.get("/etc/switchyard")
    if not overlay.check(mount is not None, "switchyard: nothing mounted at /etc/switchyard"):
        return container
    config_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
    config = overlay.one("ConfigMap", config_name) if config_name else None
    overlay.check(config_name and config_name.startswith("switchyard-config"),
                  "switchyard: /etc/switchyard must be the ConfigMap switchyard-config")
    for m in container.get("volumeMounts", []):
        ref = volumes.get(m["name"], {}).get("configMap", {}).get("name")
        if ref:
            overlay.check(overlay.find("ConfigMap", ref),
                          f"switchyard: mounts ConfigMap {ref}, which is not rendered")
    if config is not None:
        overlay.config = check_config(overlay, config, gpu)
    return container


def check_config(overlay, config, gpu):
    text = config.get("data", {}).get("switchyard.toml")
    if not overlay.check(text, "ConfigMap switchyard-config: no switchyard.toml"):
        return None
    try:
        toml = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        overlay.fail(f"switchyard.toml: {error}")
        return None
    known = tomllib.loads(DEFAULT_CONFIG.read_text())
    for section, keys in toml.items():
        if section == "devices":
            for device in keys:
                unknown = set(device) - DEVICE_KEYS
                overlay.check(not unknown, f"switchyard.toml: unknown [[devices]] keys {sorted(unknown)}")
        elif overlay.check(section in known and isinstance(keys, dict),
                           f"switchyard.toml: [{section}] is not a section of {DEFAULT_CONFIG.name}"):
            unknown = set(keys) - set(known[section])
            overlay.check(not unknown, f"switchyard.toml: unknown [{section}] keys {sorted(unknown)}")
    cluster = toml.get("cluster", {})
    overlay.check(cluster.get("enabled") is True, "switchyard.toml: [cluster] enabled must be true")
    overlay.check(cluster.get("heartbeat") == "1s", "switchyard.toml: [cluster] heartbeat must be 1s")
    overlay.check(cluster.get("dead_after") == "3s", "switchyard.toml: [cluster] dead_after must be 3s")
    devices = {d.get("id"): d for d in toml.get("devices", [])}
    overlay.check("memory" in devices.get("cpu", {}),
                  "switchyard.toml: needs a [[devices]] budget for cpu")
    if gpu:
        overlay.check("memory" in devices.get("cuda:0", {}),
                      "switchyard.toml: needs a [[devices]] budget for cuda:0")
    return toml


def check_services(overlay, container):
    templates = [o["spec"]["template"]["metadata"].get("labels", {})
                 for o in overlay.find("StatefulSet")]
    expected = {
        "switchyard": ({"http": 8000, "grpc": 8001}, False),
        "switchyard-peers": ({"grpc": 8001}, True),
        "switchyard-metrics": ({"metrics": 8002}, False),
    }
    for name, (ports, headless) in expected.items():
        service = overlay.one("Service", name)
        if service is None:
            continue
        spec = service["spec"]
        found = {p.get("name"): p.get("port") for p in spec.get("ports", [])}
        overlay.check(found == ports, f"Service {name}: ports must be {ports}, are {found}")
        if headless:
            overlay.check(spec.get("clusterIP") == "None", f"Service {name}: must be headless")
            overlay.check(spec.get("publishNotReadyAddresses") is True,
                          f"Service {name}: must publish not-ready addresses")
        else:
            overlay.check(spec.get("clusterIP") != "None", f"Service {name}: must have a cluster IP")
        if container is not None:
            for p in spec.get("ports", []):
                target = p.get("targetPort", p.get("port"))
                overlay.check(container_port(container, target) == p.get("port"),
                              f"Service {name}: port {p.get('name')} must reach container port "
                              f"{p.get('port')}")
    # Every Service selects the pods of a rendered StatefulSet.
    for service in overlay.find("Service"):
        selector = service["spec"].get("selector") or {}
        overlay.check(selector and any(selector.items() <= t.items() for t in templates),
                      f"Service {service['metadata']['name']}: selects no rendered pod")


def check_autoscaler(overlay):
    hpa = overlay.one("HorizontalPodAutoscaler", GATEWAY)
    if hpa is None:
        return
    spec = hpa["spec"]
    target = spec.get("scaleTargetRef", {})
    overlay.check((target.get("kind"), target.get("name")) == ("StatefulSet", GATEWAY),
                  "HPA: must scale the StatefulSet switchyard")
    metrics = spec.get("metrics", [])
    overlay.check(any(m.get("type") == "Pods"
                      and m["pods"]["metric"]["name"] == "switchyard_in_flight_requests"
                      and m["pods"]["target"].get("type") == "AverageValue" for m in metrics),
                  "HPA: needs the Pods metric switchyard_in_flight_requests (AverageValue)")
    overlay.check(any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
                      and m["resource"]["target"].get("type") == "Utilization" for m in metrics),
                  "HPA: needs a CPU utilization metric")
    overlay.check(spec.get("minReplicas", 1) <= 3 <= spec.get("maxReplicas", 0),
                  "HPA: 3 replicas must lie within minReplicas..maxReplicas")


def check_registry(overlay, in_cluster):
    secret = overlay.one("Secret", "switchyard-registry")
    url = (secret or {}).get("stringData", {}).get("url", "")
    overlay.check(url.startswith("postgres://"), "Secret switchyard-registry: url must be postgres://")
    postgres = overlay.find("StatefulSet", "postgres")
    if not in_cluster:
        overlay.check(not postgres, "external-postgres must not render an in-cluster PostgreSQL")
        return
    statefulset = overlay.one("StatefulSet", "postgres")
    overlay.one("Service", "postgres")
    password_secret = overlay.one("Secret", "postgres")
    if statefulset is None:
        return
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    overlay.check(container.get("image") == "postgres:16", "postgres: image must be postgres:16")
    overlay.check(statefulset["spec"].get("volumeClaimTemplates"),
                  "postgres: needs a volumeClaimTemplate")
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env.get("POSTGRES_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
    overlay.check(ref.get("name") == "postgres" and ref.get("key") == "password",
                  "postgres: POSTGRES_PASSWORD must come from Secret postgres key password")
    if password_secret is not None:
        password = password_secret.get("stringData", {}).get("password")
        user = env.get("POSTGRES_USER", {}).get("value")
        db = env.get("POSTGRES_DB", {}).get("value")
        overlay.check(url == f"postgres://{user}:{password}@postgres:5432/{db}",
                      "Secret switchyard-registry: url must name postgres's user, password and "
                      "database at postgres:5432")


EXPECTATIONS = {
    # overlay: (gpu, in-cluster PostgreSQL)
    "cpu": (False, True),
    "gpu": (True, True),
    "external-postgres": (False, False),
}


def main(version, pairs):
    failures, lines, overlays = [], [], []
    for pair in pairs:
        name, _, path = pair.partition("=")
        if name not in EXPECTATIONS:
            failures.append(f"{name}: no expectations for this overlay in {__file__}")
            continue
        gpu, in_cluster = EXPECTATIONS[name]
        with open(path) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        overlay = Overlay(name, objects)
        overlays.append(overlay)
        custom = validate_schemas(overlay, version)
        overlay.check(custom == 1, f"expected one ServiceMonitor, found {custom}")
        container = check_gateway(overlay, gpu)
        check_services(overlay, container)
        check_autoscaler(overlay)
        check_registry(overlay, in_cluster)
        failures += overlay.failures
        kinds = sorted({o["kind"] for o in objects})
        lines.append(f"check-manifests: {name}: {len(objects)} objects valid for Kubernetes "
                     f"{version} (strict; ServiceMonitor checked by hand), expected content "
                     f"present ({', '.join(kinds)})")
    # components/gpu/switchyard.toml replaces base/switchyard.toml whole: apart from the device
    # budgets, the two must say the same.
    configs = {o.name: o.config for o in overlays if o.config is not None}
    if "cpu" in configs and "gpu" in configs:
        cpu, gpu = ({k: v for k, v in configs[n].items() if k != "devices"} for n in ("cpu", "gpu"))
        if cpu != gpu:
            failures.append("gpu: switchyard.toml differs from base/switchyard.toml beyond "
                            "[[devices]]: keep components/gpu/switchyard.toml in step")
    if failures:
        for failure in failures:
            print(f"check-manifests: {failure}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
