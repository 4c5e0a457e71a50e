# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options and the Kubernetes ApiClient built from them. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
from typing import Any, Callable

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError


class _DeferredPackage(types.ModuleType):
    """A package of the kubernetes library whose ``__init__`` has not run yet.

    ``import kubernetes.client.api_client`` runs ``kubernetes/__init__.py`` and ``kubernetes/client/__init__.py``
    first, which import every API class, every model (about 800 modules), the dynamic client, kubernetes-validate and
    jsonschema: about 0.15 s of CPU in every module start, for a collection that only needs the ApiClient, its
    Configuration and the kubeconfig loader. A deferred package imports its submodules as usual; the first access to
    anything else (``kubernetes.client.CoreV1Api``, ``kubernetes.client.models.V1Pod``, ``kubernetes.__version__``) runs
    the real ``__init__`` in the package's namespace, so that code which needs the whole library still gets it.
    """

    def __getattr__(self, name: str) -> Any:
        submodule = f"{self.__name__}.{name}"
        if importlib.util.find_spec(submodule) is not None:
            return importlib.import_module(submodule)
        if not self.__dict__.get("_kubeinfer_initialised"):
            self.__dict__["_kubeinfer_initialised"] = True
            spec = self.__spec__
            if spec is None or spec.loader is None:  # pragma: no cover - _defer sets both
                raise ImportError(f"cannot initialise {self.__name__}: no loader", name=self.__name__)
            spec.loader.exec_module(self)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def _defer(name: str) -> None:
    """Register package ``name`` as a _DeferredPackage, unless it is imported already (then nothing changes)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        raise ImportError(f"No module named {name!r}", name=name)
    module = _DeferredPackage(name)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    module.__path__ = list(spec.submodule_search_locations)
    module.__package__ = name
    sys.modules[name] = module
    parent, dot, child = name.rpartition(".")
    if dot:
        setattr(sys.modules[parent], child, module)


class _AuthProviderModule(types.ModuleType):
    """A stand-in, until first use, for a library kube_config.py imports only for an auth provider.

    ``kubernetes/config/kube_config.py`` imports ``google.auth`` and ``google.auth.transport.requests`` (the ``gcp``
    provider), ``oauthlib.oauth2`` and ``requests_oauthlib`` (``oidc`` token refresh) at the top, about 0.1 s of CPU
    with cryptography and most of requests, and uses them only inside those providers' refresh functions. The first
    attribute read of any stand-in imports all four for real, as kube_config would have (so ``google.auth.transport``
    is there too), and answers from the real module. A stand-in for a package has the real ``__spec__`` and
    ``__path__`` (found without running it), so that an import of one of its submodules still works.
    ``from requests_oauthlib import OAuth2Session`` gets a forwarder that does the same and calls the real class
    (kube_config only calls it). No stand-in is a submodule of a package that is not imported (``requests.utils``
    would be: a later ``import requests`` would find it half-made).
    """

    def __init__(self, name: str, forward: tuple[str, ...] = ()) -> None:
        super().__init__(name)
        for attr in forward:
            self.__dict__[attr] = self._forwarder(attr)

    def _forwarder(self, attr: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(_load_auth_providers()[self.__name__], attr)(*args, **kwargs)
        return call

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_load_auth_providers()[self.__name__], name)


# (module, forwarded names), in kube_config.py's import order.
_AUTH_PROVIDER_MODULES = (("google.auth", ()), ("google.auth.transport.requests", ()), ("oauthlib.oauth2", ()),
                          ("requests_oauthlib", ("OAuth2Session",)))


def _load_auth_providers() -> dict[str, types.ModuleType]:
    """Replace every stand-in with the real module; the real modules by name."""
    names = [name for name, _forward in _AUTH_PROVIDER_MODULES]
    for name in names:
        if isinstance(sys.modules.get(name), _AuthProviderModule):
            del sys.modules[name]
    return {name: importlib.import_module(name) for name in names}


def _defer_auth_providers() -> None:
    """Put an _AuthProviderModule in place of each module kube_config imports for an auth provider, unless one of
    them is imported already or not installed (then kube_config imports them itself, and says what is missing)."""
    try:
        if any(name in sys.modules or importlib.util.find_spec(name.split(".", 1)[0]) is None for name, _forward in _AUTH_PROVIDER_MODULES):
            return
        # The parents kube_config reads them through: the google namespace package and oauthlib's small __init__.
        parents = {"google.auth": importlib.import_module("google"), "oauthlib.oauth2": importlib.import_module("oauthlib")}
        # Where each package is, found without running it (google.auth.transport.requests is a plain module, below a
        # package that would have to run to be searched).
        specs = {name: importlib.util.find_spec(name) for name in ("google.auth", "oauthlib.oauth2", "requests_oauthlib")}
    except (ImportError, ValueError):
        return
    for name, forward in _AUTH_PROVIDER_MODULES:
        module = _AuthProviderModule(name, forward)
        spec = specs.get(name)
        if spec is not None and spec.submodule_search_locations is not None:
            module.__spec__ = spec
            module.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = module
    for name, parent in parents.items():
        setattr(parent, name.rsplit(".", 1)[1], sys.modules[name])


def _import_kubernetes() -> tuple[Any, Any]:
    """The kubernetes library's ApiClient and Configuration and its kubeconfig loaders, without the rest of the library."""
    for package in ("kubernetes", "kubernetes.client", "kubernetes.client.api", "kubernetes.client.models", "kubernetes.config"):
        _defer(package)
    _defer_auth_providers()
    from kubernetes.client import api_client, configuration  # pylint: disable=import-outside-toplevel
    client = sys.modules["kubernetes.client"]
    # kube_config.py reads these two names from kubernetes.client: give them, so that it does not run the whole __init__.
    if isinstance(client, _DeferredPackage):
        client.__dict__.setdefault("ApiClient", api_client.ApiClient)
        client.__dict__.setdefault("Configuration", configuration.Configuration)
    from kubernetes.config import incluster_config, kube_config  # pylint: disable=import-outside-toplevel
    return (types.SimpleNamespace(ApiClient=api_client.ApiClient, Configuration=configuration.Configuration),
            types.SimpleNamespace(load_kube_config=kube_config.load_kube_config, list_kube_config_contexts=kube_config.list_kube_config_contexts,
                                  load_incluster_config=incluster_config.load_incluster_config))


try:
    k8s_client, k8s_config = _import_kubernetes()
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover - reported by the module
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = e

USER_AGENT = "kubeinfer.llm"
FILE_OPTIONS = ("kubeconfig", "ca_cert", "client_cert", "client_key")


def validate_connection(params: dict[str, Any]) -> None:
    """Check the connection options before the client is built; the message names the option and its value."""
    for option in FILE_OPTIONS:
        path = params.get(option)
        if not path:
            continue
        if not os.path.exists(path):
            raise KubeInferError(f"{option}: file {path} does not exist")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise KubeInferError(f"{option}: {path} is not a readable file")
    for option in ("host", "proxy"):
        value = params.get(option)
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise KubeInferError(f"{option}: {value!r} is not an http:// or https:// URL")


def origin(params: dict[str, Any]) -> dict[str, str]:
    """Which option named the API server and which one carries the credentials, for error messages.

    ``{"server": option, "credentials": option, "ca": option}``: an explicit option when given, else where the
    kubeconfig (or the in-cluster service account) supplied it.
    """
    kubeconfig = params.get("kubeconfig")
    if kubeconfig:
        source = f"kubeconfig ({kubeconfig}" + (f", context {params['context']})" if params.get("context") else ")")
    elif params.get("host"):
        source = "host"
    elif os.path.exists(os.path.expanduser("~/.kube/config")):
        source = "kubeconfig (~/.kube/config)"
    else:
        source = "the in-cluster service account"
    credentials = "api_key" if params.get("api_key") else "client_cert/client_key" if params.get("client_cert") else source
    return {"server": "host" if params.get("host") else source, "credentials": credentials,
            "ca": "ca_cert" if params.get("ca_cert") else source}


def build_api_client(params: dict[str, Any]) -> Any:
    """Build a kubernetes ApiClient from the connection options.

    Explicit options win over the kubeconfig; with no kubeconfig and no host the
    in-cluster service account is used (AWX execution environments, bring-up pods).
    A module that sends requests from threads (gpu_node's ``parallel``) gets a urllib3
    pool of at least that many connections (its default is 5 per CPU), so that none
    is opened and dropped per request.
    """
    if not HAS_KUBERNETES:
        raise KubeInferError(f"the 'kubernetes' Python library is required: {KUBERNETES_IMPORT_ERROR}")
    validate_connection(params)
    configuration = k8s_client.Configuration()
    kubeconfig = params.get("kubeconfig")
    host = params.get("host")
    context = params.get("context")
    if kubeconfig or not host:
        where = kubeconfig or "~/.kube/config"
        if kubeconfig or os.path.exists(os.path.expanduser("~/.kube/config")):
            if context:
                _check_context(kubeconfig, context, where)
            try:
                k8s_config.load_kube_config(config_file=kubeconfig, context=context,
                                            client_configuration=configuration, persist_config=False)
            except Exception as e:  # the kubernetes library raises several unrelated types here
                raise KubeInferError(f"kubeconfig: could not load the cluster configuration from {where}: {e}") from e
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except Exception as e:
                raise KubeInferError("kubeconfig: no kubeconfig given, no ~/.kube/config, and not running in a pod "
                                     f"with a service account ({e}); set kubeconfig, or host and api_key") from e
    if host:
        configuration.host = host
    if params.get("api_key"):
        configuration.api_key = {"authorization": "Bearer " + params["api_key"]}
    if params.get("validate_certs") is not None:
        configuration.verify_ssl = params["validate_certs"]
    if params.get("ca_cert"):
        configuration.ssl_ca_cert = params["ca_cert"]
    if params.get("client_cert"):
        configuration.cert_file = params["client_cert"]
    if params.get("client_key"):
        configuration.key_file = params["client_key"]
    if params.get("proxy"):
        configuration.proxy = params["proxy"]
    concurrency = params.get("parallel")
    if concurrency:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, concurrency)
    api_client = k8s_client.ApiClient(configuration)
    # Names the collection in the API server's audit log, apart from other clients of the same library.
    api_client.user_agent = USER_AGENT
    return api_client


def _check_context(kubeconfig: str | None, context: str, where: str) -> None:
    """The context must be one the kubeconfig defines (the library's own message names no option)."""
    try:
        contexts, _current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception as e:
        raise KubeInferError(f"kubeconfig: could not load the cluster configuration from {where}: {e}") from e
    names = sorted(str(c.get("name")) for c in contexts or [])
    if context not in names:
        raise KubeInferError(f"context: {context!r} is not a context of {where} (its contexts: {', '.join(names) or 'none'})")
