"""The agent's credentials without the official client: the service account in the cluster, a kubeconfig
elsewhere, and every fault of a kubeconfig named before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipvs_reaper.cluster.credentials import agent_credentials
from ipvs_reaper.errors import InputError, RuntimeFailure


def _kubeconfig(directory: Path, user: str, cluster: str = 'server: "https://10.0.0.1:6443"') -> str:
    path = directory / "config"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{{cluster}}}}}]
users: [{{name: u, user: {{{user}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: team}}}}]
current-context: x
"""
    )
    return str(path)


def test_in_the_cluster_the_service_account_is_read_at_each_login(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_text("pem")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    login = agent_credentials(None, environ=env, service_account=tmp_path)
    info = login()
    assert (info.server, info.token, info.scheme, info.ca_path) == (
        "https://[fd00::1]:443",
        "first",
        "Bearer",
        str(tmp_path / "ca.crt"),
    )
    (tmp_path / "token").write_text("rotated")
    assert login().token == "rotated"


def test_a_given_kubeconfig_wins_over_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa")
    path = _kubeconfig(tmp_path, "token: abc")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    info = agent_credentials(path, environ=env, service_account=tmp_path)()
    assert (info.server, info.token, info.default_namespace) == ("https://10.0.0.1:6443", "abc", "team")


def test_files_in_a_kubeconfig_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    path = _kubeconfig(
        tmp_path,
        "client-certificate: certs/me.crt, client-key: certs/me.key, tokenFile: tok",
        'server: "https://a:6443", certificate-authority: ca.pem',
    )
    info = agent_credentials(path, environ={})()
    assert info.certificate_path == str(tmp_path / "certs/me.crt")
    assert info.private_key_path == str(tmp_path / "certs/me.key")
    assert info.ca_path == str(tmp_path / "ca.pem")
    assert info.token == "from-file"


@pytest.mark.parametrize(
    ("user", "cluster", "says"),
    [
        ("exec: {command: aws}", 'server: "https://a"', "logs in through exec"),
        ("auth-provider: {name: gcp}", 'server: "https://a"', "logs in through auth-provider"),
        ("token: t", "insecure-skip-tls-verify: true", "cluster 'c' has no server"),
        (
            "client-certificate: a.crt, client-certificate-data: QQ==",
            'server: "https://a"',
            "certificate path & data",
        ),
        ("tokenFile: missing", 'server: "https://a"', "tokenFile: No such file"),
    ],
)
def test_a_kubeconfig_that_cannot_be_used_is_named(
    tmp_path: Path, user: str, cluster: str, says: str
) -> None:
    path = _kubeconfig(tmp_path, user, cluster)
    with pytest.raises(InputError) as error:
        agent_credentials(path, environ={})
    assert str(error.value).startswith(f"{path}: not a usable kubeconfig") and says in str(error.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("clusters: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
        ("clusters: []\n", "no current-context"),
        ("current-context: x\ncontexts: [{name: y, context: {}}]\n", "no context named 'x'"),
    ],
)
def test_a_file_that_is_not_a_kubeconfig_is_named(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "kc"
    path.write_text(text)
    with pytest.raises(InputError, match=says):
        agent_credentials(str(path), environ={})


def test_no_credentials_at_all(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="no Kubernetes credentials"):
        agent_credentials(None, environ={"KUBECONFIG": str(tmp_path / "absent")}, service_account=tmp_path)
