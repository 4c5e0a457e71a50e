# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helm CLI runner: argv lists, values through temp files, masked failures. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable

from ansible_collections.kubeinfer.llm.plugins.module_utils._client import origin
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

# module.run_command-compatible: (argv, environ_update=...) -> (rc, stdout, stderr)
RunCommand = Callable[..., "tuple[int, str, str]"]


_TRANSPORT = re.compile(r'(?:Get|Post|Put|Patch|Delete|Head) "(https?://[^"/]+)[^"]*": (.+)$')
"""A failed request of Go's net/http client as helm quotes it: ``Post "https://host:port/...": <transport error>``. An
HTTP error status has another shape, so this one means the API server did not answer (gone, reset, EOF, timeout)."""


class Helm:
    """Runs helm with the same cluster connection as the Python client."""

    def __init__(self, run_command: RunCommand, binary: str, connection: dict[str, Any], missing: str | None = None) -> None:
        self.run_command = run_command
        self.binary = binary
        self.missing = missing
        """Why there is no helm binary (see find_helm), or None; ``run`` raises it."""
        self.env: dict[str, str] = {}
        self.global_args: list[str] = []
        if connection.get("kubeconfig"):
            self.global_args += ["--kubeconfig", connection["kubeconfig"]]
        if connection.get("context"):
            self.global_args += ["--kube-context", connection["context"]]
        if connection.get("host"):
            self.global_args += ["--kube-apiserver", connection["host"]]
        if connection.get("ca_cert"):
            self.global_args += ["--kube-ca-file", connection["ca_cert"]]
        if connection.get("validate_certs") is False:
            self.global_args += ["--kube-insecure-skip-tls-verify"]
        if connection.get("api_key"):
            # Passed through the environment, never on the command line.
            self.env["HELM_KUBETOKEN"] = connection["api_key"]
        self._secrets = [v for v in self.env.values() if v]
        self.origin = origin(connection)
        self.commands: list[list[str]] = []
        """Every argv run, the values file shown as ``<values-file>``."""

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def require(self, why: str) -> None:
        """Raise, naming helm_binary and ``why`` helm is needed, when there is no helm binary."""
        if self.missing:
            raise KubeInferError(f"{self.missing} (helm is needed to {why})")

    def run(self, args: list[str], values: dict[str, Any] | None = None) -> str:
        """Run ``helm <args> <global args>`` and return stdout; ``values`` go through a private temp file."""
        self.require(f"run helm {args[0]}")
        argv = [self.binary] + args + self.global_args
        path = None
        try:
            if values is not None:
                fd, path = tempfile.mkstemp(prefix="kubeinfer-values-", suffix=".json")
                with os.fdopen(fd, "w") as f:
                    json.dump(values, f)
                argv += ["--values", path]
            self.commands.append([a if a != path else "<values-file>" for a in argv])
            rc, out, err = self.run_command(argv, environ_update=self.env)
        finally:
            if path:
                os.unlink(path)
        if rc != 0:
            text = self.mask(err.strip() or out.strip())
            raise KubeInferError(
                self.connection_problem(text) or f"helm {args[0]} failed (rc={rc}): {text}",
                rc=rc, stdout=self.mask(out), stderr=self.mask(err), command=self.command_lines()[-1],
            )
        return out

    def connection_problem(self, text: str) -> str | None:
        """helm's own words when it could not talk to the API server, led by the connection option to fix."""
        if "Kubernetes cluster unreachable" not in text:
            # The API server went away while helm worked: helm quotes the request that got no answer.
            found = next((m for m in map(_TRANSPORT.search, text.splitlines()) if m), None)
            if found is None:
                return None
            return (f"{self.origin['server']}: the API server at {found.group(1)} stopped answering while helm worked: "
                    f"{found.string.strip().removeprefix('Error: ')}")
        line = next((x for x in text.splitlines() if "Kubernetes cluster unreachable" in x), text).strip()
        line = line.removeprefix("Error: ")
        if "x509" in line or "certificate" in line:
            option = self.origin["ca"]
        elif "credentials" in line or "Unauthorized" in line:
            option = self.origin["credentials"]
        else:
            option = self.origin["server"]
        return f"{option}: helm could not use the API server: {line}"

    def command_lines(self) -> list[str]:
        """The command lines run so far, secrets masked: the ``helm_commands`` of every module that runs helm."""
        return [self.mask(" ".join(argv)) for argv in self.commands]

    # -- read ------------------------------------------------------------------------
    def release(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The release as ``helm list`` shows it (chart, app_version, status, revision), or None."""
        out = self.run(["list", "--namespace", namespace, "--all", "--filter", f"^{name}$", "--output", "json"])
        releases = json.loads(out or "[]")
        return releases[0] if releases else None

    def values(self, name: str, namespace: str) -> dict[str, Any]:
        """The user-supplied values of the deployed revision."""
        out = self.run(["get", "values", name, "--namespace", namespace, "--output", "json"])
        return json.loads(out or "{}") or {}

    def show_chart(self, chart: str, version: str | None = None, repo: str | None = None) -> str:
        """The Chart.yaml of a chart reference, as helm prints it."""
        return self.run(["show", "chart", chart] + (["--version", version] if version else []) + (["--repo", repo] if repo else []))

    # -- write -----------------------------------------------------------------------
    def upgrade_install(self, name: str, chart: str, namespace: str, values: dict[str, Any],
                        version: str | None = None, repo: str | None = None, create_namespace: bool = False,
                        wait: bool = False, timeout: int = 300, hook_timeout: int | None = None) -> str:
        """``helm upgrade --install``; ``hook_timeout`` bounds helm's wait for hook Jobs (pre-install/pre-upgrade) without --wait."""
        args = ["upgrade", "--install", name, chart, "--namespace", namespace, "--reset-values"]
        if version:
            args += ["--version", version]
        if repo:
            args += ["--repo", repo]
        if create_namespace:
            args.append("--create-namespace")
        if wait:
            args += ["--wait", "--timeout", f"{max(timeout, hook_timeout or 0)}s"]
        elif hook_timeout:
            args += ["--timeout", f"{hook_timeout}s"]
        return self.run(args, values=values)

    def rollback(self, name: str, namespace: str, revision: int | None = None) -> None:
        self.run(["rollback", name] + ([str(revision)] if revision else []) + ["--namespace", namespace, "--wait"])

    def uninstall(self, name: str, namespace: str, wait: bool = True, timeout: int = 300) -> None:
        self.run(["uninstall", name, "--namespace", namespace] + (["--wait", "--timeout", f"{timeout}s"] if wait else []))

    def template(self, name: str, chart: str, namespace: str, values: dict[str, Any],
                 version: str | None = None, repo: str | None = None, kube_version: str | None = None) -> str:
        args = ["template", name, chart, "--namespace", namespace]
        if version:
            args += ["--version", version]
        if repo:
            args += ["--repo", repo]
        if kube_version:
            args += ["--kube-version", kube_version]
        return self.run(args, values=values)


def find_helm(explicit: str | None, get_bin_path: Callable[..., Any]) -> str:
    """The helm binary: the explicit path, else HELM_BINARY, else helm on PATH."""
    candidate = explicit or os.environ.get("HELM_BINARY")
    if candidate:
        if not os.access(candidate, os.X_OK):
            raise KubeInferError(f"helm_binary: {candidate} is not an executable file")
        return candidate
    found = get_bin_path("helm")
    if not found:
        raise KubeInferError("helm_binary: helm was not found on PATH; install helm 3 or set helm_binary")
    return str(found)
