"""The agent's credentials, as kopf's login takes them: the pod's service account, or a kubeconfig.

Read without the official client (see watch_api.py for why). A kubeconfig may give a token, a user name and
password, or a client certificate, each inline or as a file (relative to the kubeconfig, as kubectl reads
it); a user that runs a plugin (`exec`, `auth-provider`) is refused with a message: the agent runs in the
cluster with its service account, and a kubeconfig is for trying it from a workstation.

Read again at each login (kopf logs in again after a 401): service account tokens are rotated on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import yaml

from ipvs_reaper.errors import InputError, RuntimeFailure
from ipvs_reaper.input_text import read_input_text
from ipvs_reaper.yaml_text import yaml_error_text

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_DEFAULT_KUBECONFIG = "~/.kube/config"


@dataclass(frozen=True, slots=True)
class InCluster:
    """The API server from the environment kubelet gives every pod, the token and CA from the mount."""

    host: str
    port: str
    directory: Path = SERVICE_ACCOUNT

    def login(self) -> kopf.ConnectionInfo:
        token_file, ca_file = self.directory / "token", self.directory / "ca.crt"
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise RuntimeFailure(f"{token_file}: {error.strerror or error}") from None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return kopf.ConnectionInfo(
            server=f"https://{host}:{self.port}",
            ca_path=str(ca_file) if ca_file.exists() else None,
            scheme="Bearer",
            token=token or None,
        )


@dataclass(frozen=True, slots=True)
class Kubeconfig:
    path: str

    def login(self) -> kopf.ConnectionInfo:
        return _connection_from_kubeconfig(self.path)


def agent_credentials(
    kubeconfig: str | None,
    *,
    environ: dict[str, str] | None = None,
    service_account: Path = SERVICE_ACCOUNT,
) -> Callable[[], kopf.ConnectionInfo]:
    """The login to use, checked once now: a bad kubeconfig is an input error naming it before anything
    starts. In the cluster first (unless a kubeconfig is given), then $KUBECONFIG, then ~/.kube/config."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if kubeconfig is None and host and port and (service_account / "token").exists():
        return InCluster(host, port, service_account).login
    path = kubeconfig or _kubeconfig_path(env)
    if kubeconfig is None and not os.path.exists(path):
        raise RuntimeFailure(
            f"no Kubernetes credentials: not running in a cluster, and no kubeconfig at {path} "
            "(give one with --kubeconfig or $KUBECONFIG)"
        )
    source = Kubeconfig(path)
    source.login()  # its faults now, naming the file
    return source.login


def _kubeconfig_path(env: Any) -> str:
    listed = [part for part in env.get("KUBECONFIG", "").split(os.pathsep) if part]
    # A merged list is not read: its first file is the one kubectl writes to, and usually the whole story.
    return os.path.expanduser(listed[0] if listed else _DEFAULT_KUBECONFIG)


def _connection_from_kubeconfig(path: str) -> kopf.ConnectionInfo:
    def fault(message: str) -> InputError:
        return InputError(f"{path}: not a usable kubeconfig: {message}")

    try:
        document = yaml.safe_load(read_input_text(path))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not a kubeconfig: not valid YAML: {yaml_error_text(error)}") from None
    except RecursionError:
        raise InputError(f"{path}: not a kubeconfig: nested too deeply") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: not a kubeconfig: expected a mapping with clusters, users and contexts")
    current = document.get("current-context")
    if not isinstance(current, str) or not current:
        raise fault("no current-context")
    context = _named(document, "contexts", "context", current, fault)
    cluster = _named(document, "clusters", "cluster", context.get("cluster"), fault)
    user = _named(document, "users", "user", context.get("user"), fault) if context.get("user") else {}
    for plugin in ("exec", "auth-provider"):
        if plugin in user:
            raise fault(
                f"user {context.get('user')!r} logs in through {plugin}, which `run` does not support "
                "(in the cluster it uses its service account): give one with a token or a certificate"
            )
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise fault(f"cluster {context.get('cluster')!r} has no server")
    base = Path(path).parent

    def file(value: Any) -> str | None:
        return str(base / value) if isinstance(value, str) and value else None

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    token = text(user.get("token"))
    if token is None and text(user.get("tokenFile")):
        try:
            token = (base / user["tokenFile"]).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise fault(f"tokenFile: {error.strerror or error}") from None
    try:
        return _connection(server, cluster, user, context, token, file, text)
    except ValueError as error:  # a CA, certificate or key given both inline and as a file
        raise fault(str(error)) from None


def _connection(
    server: str,
    cluster: dict[str, Any],
    user: dict[str, Any],
    context: dict[str, Any],
    token: str | None,
    file: Callable[[Any], str | None],
    text: Callable[[Any], str | None],
) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(
        server=server,
        ca_path=file(cluster.get("certificate-authority")),
        ca_data=text(cluster.get("certificate-authority-data")),
        insecure=cluster.get("insecure-skip-tls-verify") is True,
        certificate_path=file(user.get("client-certificate")),
        certificate_data=text(user.get("client-certificate-data")),
        private_key_path=file(user.get("client-key")),
        private_key_data=text(user.get("client-key-data")),
        username=text(user.get("username")),
        password=text(user.get("password")),
        scheme="Bearer" if token else None,
        token=token,
        default_namespace=text(context.get("namespace")),
        proxy_url=text(cluster.get("proxy-url")),
    )


def _named(
    document: dict[str, Any], section: str, field: str, name: Any, fault: Callable[[str], InputError]
) -> dict[str, Any]:
    entries = document.get(section)
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(field)
            if not isinstance(value, dict):
                raise fault(f"{section[:-1]} {name!r} has no {field} mapping")
            return value
    raise fault(f"no {section[:-1]} named {name!r}")
