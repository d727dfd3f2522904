"""The Helm chart, with a real helm (v3.17.1): lint, render over value sets, validate every object against the
oldest and newest Kubernetes we claim, checkov with justified skips, and what the pod may do."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ipvs_reaper import package_version
from ipvs_reaper.config import parse_config_text
from tests.chart.render import (
    CHART,
    MONITORING,
    NAMESPACE,
    containers,
    objects_of,
    render,
    render_text,
    values_file,
)
from tests.tools import checkov, helm

# The Kubernetes versions the chart claims (Chart.yaml's kubeVersion is the oldest).
KUBERNETES = ("1.25.0", "1.37.0")

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "dry-run": {"dryRun": True},
    "events": {"postEvents": True},
    "pod-owners": {"doctor": {"podOwners": True}},
    "monitors-and-rules": {
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "alerts": {"prometheusRule": {"enabled": True}},
    },
    "rbac-proxy": {"metrics": {"kubeRbacProxy": {"enabled": True}, "serviceMonitor": {"enabled": True}}},
    "existing-config-map": {"existingConfigMap": "site-policy"},
    "report-only": {"config": {"expireNodestConn": "report-only"}},
    "policy": {
        "config": {
            "policy": {"notReady": {"graceSeconds": 60, "maxWaitSeconds": None}},
            "namespaces": {"payments": {"gone": {"reap": "never"}}},
            "breaker": {"maxShare": 0.25},
            "nodePortAddresses": ["192.168.0.0/16", "fd00::/8"],
            "excludeCIDRs": ["10.250.0.0/24"],
        }
    },
    "everything-off": {
        "serviceAccount": {"create": False, "name": "reaper"},
        "rbac": {"create": False},
        "metrics": {"service": {"enabled": False}},
        "firstSeen": {"enabled": False},
        "doctor": {"interval": 0},
        "sysctlMount": False,
        "alerts": {"rules": {"IpvsReaperDown": {"enabled": False}}},
        "tolerations": [],
        "nodeSelector": {},
        "updateStrategy": {"type": "OnDelete"},
    },
}

# checkov's findings we accept, and why. Anything else fails the test.
CHECKOV_SKIPS = {
    "CKV_K8S_19": "hostNetwork: the IPVS table and sysctls to reap are the node's network namespace's",
    "CKV_K8S_25": "NET_ADMIN for IPVS netlink and the rule reads; NET_RAW only while the doctor's check "
    "reads legacy iptables (README: The pod)",
    "CKV_K8S_23": "UID 0: without ambient capabilities a non-root process has no effective ones (k8s#56374)",
    "CKV_K8S_40": "UID 0, as above",
    "CKV_K8S_38": "the token is needed: the agent watches Services, EndpointSlices and its Node",
    "CKV_K8S_11": "no CPU limit: throttling a node-critical agent delays reaps; its request reserves a share",
    "CKV_K8S_43": "tags by default, so a locally built image installs; image.digest pins one",
    "CKV_K8S_15": "IfNotPresent: a node-critical pod must start while the registry is down; pin by digest",
    "CKV2_K8S_6": "NetworkPolicy does not apply to hostNetwork pods; /metrics can sit behind kube-rbac-proxy",
}


def api_versions(name: str) -> tuple[str, ...]:
    return MONITORING if name in ("monitors-and-rules", "rbac-proxy") else ()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values, api_versions(name)) for name, values in VALUE_SETS.items()}


def test_lint_strict(tmp_path: Path) -> None:
    for name, values in VALUE_SETS.items():
        command = [helm(), "lint", "--strict", str(CHART), "-f", str(values_file(values, tmp_path))]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_object_is_valid_kubernetes(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    for name, documents in rendered.items():
        for document in documents:
            if document["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD's: tests/chart/test_monitoring_objects.py
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                raise AssertionError(f"{name}: {document['kind']} on {version}: {error.message}") from None


def test_checkov_finds_nothing_but_the_justified(tmp_path: Path) -> None:
    for name, values in VALUE_SETS.items():
        manifest = tmp_path / f"{name}.yaml"
        manifest.write_text(render_text(values, api_versions(name)))
        result = subprocess.run(
            [
                checkov(),
                "--file",
                str(manifest),
                "--framework",
                "kubernetes",
                "--skip-download",
                "--skip-check",
                ",".join(CHECKOV_SKIPS),
                "--output",
                "json",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
        report = json.loads(result.stdout or "{}")
        failed = [
            f"{check['check_id']} {check['resource']}"
            for part in (report if isinstance(report, list) else [report])
            for check in part.get("results", {}).get("failed_checks", [])
        ]
        assert failed == [], f"{name}: {failed}"
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"


def cluster_role_rules(documents: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """The agent's ClusterRole's rules (the scraper's, with kube-rbac-proxy, is checked on its own)."""
    rules: dict[tuple[str, str], set[str]] = {}
    for role in objects_of(documents, "ClusterRole"):
        if role["metadata"]["name"].endswith("-scraper"):
            assert role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
            continue
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


READS = {"get", "list", "watch"}


def test_rbac_reads_what_it_watches_and_writes_only_events_when_posting(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    watched = {("", "services"): READS, ("", "nodes"): READS, ("discovery.k8s.io", "endpointslices"): READS}
    assert cluster_role_rules(rendered["defaults"]) == watched
    assert cluster_role_rules(rendered["events"]) == watched | {("", "events"): {"create"}}
    assert cluster_role_rules(rendered["pod-owners"]) == watched | {("", "pods"): {"list"}}
    assert cluster_role_rules(rendered["rbac-proxy"]) == watched | {
        ("authentication.k8s.io", "tokenreviews"): {"create"},
        ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    }
    assert cluster_role_rules(rendered["everything-off"]) == {}
    for name, documents in rendered.items():
        for kind in ("Role", "RoleBinding"):
            assert not objects_of(documents, kind), name
        for binding in objects_of(documents, "ClusterRoleBinding"):
            (subject,) = binding["subjects"]
            assert subject["namespace"] == NAMESPACE


def privileged(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("privileged") is True or any(privileged(value) for value in node.values())
    return isinstance(node, list) and any(privileged(value) for value in node)


def test_the_pod_is_a_node_agent_with_net_admin_and_net_raw_for_the_doctor_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, documents in rendered.items():
        assert not privileged(documents), name
        (daemonset,) = objects_of(documents, "DaemonSet")
        pod = daemonset["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert pod["priorityClassName"] == "system-node-critical"
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "checksum/config" not in json.dumps(daemonset["spec"]["template"]["metadata"])
        agent, *others = containers(daemonset)
        context = agent["securityContext"]
        doctor = VALUE_SETS[name].get("doctor", {}).get("interval", 300) > 0
        added = ["NET_ADMIN", "NET_RAW"] if doctor else ["NET_ADMIN"]
        assert context["capabilities"] == {"drop": ["ALL"], "add": added}, name
        assert f"--doctor-interval={VALUE_SETS[name].get('doctor', {}).get('interval', 300)}" in agent["args"]
        assert context["runAsUser"] == 0 and context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in agent[
            "env"
        ]
        assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for other in others:
            assert other["securityContext"]["capabilities"] == {"drop": ["ALL"]}, name
            assert other["securityContext"]["runAsNonRoot"] is True
    pod = objects_of(rendered["defaults"], "DaemonSet")[0]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert (
        objects_of(rendered["defaults"], "DaemonSet")[0]["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    )


def writable_host_mounts(daemonset: dict[str, Any]) -> list[str]:
    """The hostPath volumes the agent mounts writable, by host path."""
    volumes = {
        volume["name"]: volume["hostPath"]["path"]
        for volume in daemonset["spec"]["template"]["spec"]["volumes"]
        if "hostPath" in volume
    }
    agent = containers(daemonset)[0]
    return sorted(
        volumes[mount["name"]]
        for mount in agent["volumeMounts"]
        if mount["name"] in volumes and not mount.get("readOnly", False)
    )


HOST_IPV4_SYSCTLS = "/proc/sys/net/ipv4"


def test_the_sysctls_are_writable_unless_a_dry_run_or_switched_off(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    # Whatever the config's expireNodestConn: a live edit of the ConfigMap to `enforce` must find the mount.
    for name, documents in rendered.items():
        (daemonset,) = objects_of(documents, "DaemonSet")
        mounts = writable_host_mounts(daemonset)
        writable = HOST_IPV4_SYSCTLS in mounts
        args = containers(daemonset)[0]["args"]
        assert writable == (name not in ("dry-run", "everything-off")), name
        assert ("--sysctl-write-dir=/run/ipvs-reaper/sysctl/vs" in args) == writable, name
        # Of the host's /proc, that directory and nothing else; a Directory, which every node has (the
        # ip_vs file exists only while the module is loaded: a File mount stalled nodes without it).
        of_proc = [mount for mount in mounts if mount.startswith("/proc")]
        assert of_proc == ([HOST_IPV4_SYSCTLS] if writable else []), name
        for volume in daemonset["spec"]["template"]["spec"]["volumes"]:
            if volume.get("hostPath", {}).get("path", "").startswith("/proc"):
                assert volume["hostPath"]["type"] == "Directory", name
        for mount in containers(daemonset)[0]["volumeMounts"]:
            assert not mount["mountPath"].startswith("/proc"), name
    first_seen = writable_host_mounts(objects_of(rendered["dry-run"], "DaemonSet")[0])
    assert first_seen == ["/var/lib/ipvs-reaper"]  # the grace clocks, nothing of the kernel's


def test_the_config_map_holds_the_config_the_agent_reads(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, values in VALUE_SETS.items():
        maps = objects_of(rendered[name], "ConfigMap")
        if values.get("existingConfigMap"):
            assert maps == []
            (daemonset,) = objects_of(rendered[name], "DaemonSet")
            volume = daemonset["spec"]["template"]["spec"]["volumes"][0]
            assert volume["configMap"]["name"] == "site-policy"
            continue
        (config_map,) = maps
        text = config_map["data"]["config.yaml"]
        assert yaml.safe_load(text) in (values.get("config", {}), None)
        parse_config_text(text, "config.yaml")  # raises if the agent would reject it


def test_monitoring_objects_only_where_the_cluster_has_their_api() -> None:
    values = VALUE_SETS["monitors-and-rules"]
    kinds = {document["kind"] for document in render(values, MONITORING)}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    kinds = {document["kind"] for document in render(values, ())}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_a_pod_monitor_cannot_be_combined_with_the_rbac_proxy() -> None:
    values = {"metrics": {"kubeRbacProxy": {"enabled": True}, "podMonitor": {"enabled": True}}}
    with pytest.raises(AssertionError, match=r"use metrics\.serviceMonitor"):
        render(values, MONITORING)


def test_package_carries_the_agent_version(tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == package_version()
    subprocess.run([helm(), "package", str(CHART), "-d", str(tmp_path)], check=True, capture_output=True)
    (archive,) = tmp_path.glob("ipvs-reaper-*.tgz")
    with tarfile.open(archive) as packaged:
        names = set(packaged.getnames())
    for expected in (
        "values.schema.json",
        "rules/ipvs-reaper.rules.yaml",
        "README.md",
        "templates/NOTES.txt",
    ):
        assert f"ipvs-reaper/{expected}" in names, expected


# Values documented as one (a Kubernetes object's fields, a block the agent reads).
WHOLE_VALUES = (
    "config",
    "alerts.rules",
    "resources",
    "nodeSelector",
    "updateStrategy",
    "metrics.kubeRbacProxy.resources",
    "dashboards.labels",
    "livenessProbe",
    "readinessProbe",
)


def test_the_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()

    def paths(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node and prefix not in WHOLE_VALUES:
            return [p for key, value in node.items() for p in paths(value, f"{prefix}.{key}".lstrip("."))]
        return [prefix]

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in paths(values) if f"`{path}`" not in readme]
    assert missing == []


def rendered_notes(tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` leaves it out): rendered through `tpl` in a copy
    of the chart."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copyfile(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-as-object.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "notes.txt") . | quote }}}\n'
    )
    command = [
        helm(),
        "template",
        "reaper",
        str(chart),
        "-n",
        NAMESPACE,
        "-f",
        str(values_file(values, tmp_path)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    (notes,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["metadata"]["name"] == "notes"]
    return str(notes["data"]["notes"])


def test_notes_say_what_was_installed(tmp_path: Path) -> None:
    notes = rendered_notes(tmp_path, {"dryRun": True, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert "DRY RUN" in notes and "ipvs_reaper_would_reap_total" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "no monitoring.coreos.com/v1 ServiceMonitor: none was created" in notes
    assert "not mounted writable" in notes  # a dry run writes no sysctl
    notes = rendered_notes(tmp_path / "enforcing", {})
    assert "DRY RUN" not in notes and "sets net.ipv4.vs.expire_nodest_conn=1" in notes
    notes = rendered_notes(tmp_path / "off", {"sysctlMount": False})
    assert "not mounted writable" in notes and "/readyz says so" in notes


def test_the_ports_collide_with_no_common_node_agent_and_not_with_each_other() -> None:
    # 9808 is the CSI livenessprobe sidecar's default and 9809 node-driver-registrar's, both on the host
    # network: one of the two pods crash-looped with "address in use".
    (daemonset,) = objects_of(render({"metrics": {"kubeRbacProxy": {"enabled": True}}}), "DaemonSet")
    agent, proxy = containers(daemonset)
    ports = {int(a.rpartition(":")[2]) for a in agent["args"] + proxy["args"] if "listen" in a}
    assert ports == {10373, 10374}
    taken = {9808, 9809, 9100, 10248, 10249, 10250, 10255, 10256, 9091, 9099, 9962, 9963, 9964, 9965}
    assert not ports & taken
    with pytest.raises(AssertionError, match=r"metrics\.kubeRbacProxy\.port: must differ from metrics\.port"):
        render({"metrics": {"port": 10400, "kubeRbacProxy": {"enabled": True, "port": 10400}}})
    render({"metrics": {"port": 10400, "kubeRbacProxy": {"enabled": False, "port": 10400}}})  # unused: fine


@pytest.mark.parametrize("address", ["localhost", "node-a", "0.0.0.0:10373", "10.0.0", "::1]"])
def test_a_listen_address_that_is_not_an_ip_is_refused(address: str) -> None:
    with pytest.raises(AssertionError, match="listenAddress"):
        render({"metrics": {"listenAddress": address}})


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "::", "fd00::1"])
def test_an_ip_listen_address_is_taken(address: str) -> None:
    render({"metrics": {"listenAddress": address}})


def test_the_agents_probes_do_not_go_through_the_proxy() -> None:
    (daemonset,) = objects_of(render({"metrics": {"kubeRbacProxy": {"enabled": True}}}), "DaemonSet")
    agent = containers(daemonset)[0]
    for probe in ("livenessProbe", "readinessProbe"):
        check = agent[probe]["httpGet"]
        assert check["host"] == "127.0.0.1" and check["port"] == 10373 and check["scheme"] == "HTTP"
    assert "--listen=127.0.0.1:10373" in agent["args"]


def test_config_keys_beside_an_existing_config_map_are_refused() -> None:
    with pytest.raises(AssertionError, match=r"config: must be empty with existingConfigMap \(site-policy\)"):
        render({"existingConfigMap": "site-policy", "config": {"expireNodestConn": "report-only"}})
