# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PromQL series selectors, built and read in one place. Private to this collection: the interface may change without notice.

Every query the collection writes (the adapter rule, the diagnosis's series lookup, the KEDA trigger,
the dashboard panels) quotes its label values here, with the escapes of a PromQL double-quoted string
(prometheus/promql/parser/lex.go: backslash, double quote and newline).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence, Tuple

from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import RELEASE_POD_LABEL


def series_label(key: str) -> str:
    """The series label a Kubernetes label key becomes after a scrape (``kubeinfer.io/release`` ->
    ``kubeinfer_io_release``): every character outside [a-zA-Z0-9_] is replaced by ``_``."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


# The vLLM pods of one release carry the Kubernetes label ``kubeinfer.io/release: <release>`` (set by
# the collection's vLLM chart on the pod template, nowhere else). A PodMonitor/ServiceMonitor with
# ``podTargetLabels: [kubeinfer.io/release]`` or a plain scrape config with ``labelmap:
# __meta_kubernetes_pod_label_(.+)`` gives the series label ``kubeinfer_io_release``. The scrape must
# also attach ``namespace`` and ``pod`` (the prometheus-operator does); the adapter maps those two to
# the namespace and pod resources. ``app.kubernetes.io/instance`` is not used for filtering: any other
# chart installed under the same release name carries it too.
RELEASE_SERIES_LABEL = series_label(RELEASE_POD_LABEL)
NAMESPACE_SERIES_LABEL = "namespace"
POD_SERIES_LABEL = "pod"

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

# One label matcher: (label, operator, value), the value unquoted.
Matcher = Tuple[str, str, str]

_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')
_RE2_META = re.compile(r"[\\.+*?()|\[\]{}^$]")


def quote(value: str) -> str:
    """``value`` as a PromQL double-quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def unquote(body: str) -> str:
    """The value of a PromQL string literal's body (the text between the quotes)."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), body)


def one_of(values: Iterable[str]) -> str:
    """A regular expression (RE2, anchored by PromQL) that matches exactly the given literal values."""
    return "|".join(_RE2_META.sub(lambda m: "\\" + m.group(0), value) for value in values)


def literals(regex: str) -> list[str]:
    """The values of a one_of() expression."""
    return [re.sub(r"\\(.)", r"\1", part) for part in regex.split("|") if part]


def name_matcher(names: Sequence[str]) -> Matcher:
    """``__name__="a"`` for one metric name, ``__name__=~"a|b"`` for several."""
    return ("__name__", "=", names[0]) if len(names) == 1 else ("__name__", "=~", one_of(names))


def matchers(*items: Matcher) -> str:
    """The matchers, in the order given, as the inside of a selector's braces."""
    return ",".join(f"{label}{op}{quote(value)}" for label, op, value in items)


def selector(metric: str, *items: Matcher) -> str:
    """``metric{matchers}``; ``metric`` may be empty (a ``__name__`` matcher instead), the braces go without matchers."""
    return f"{metric}{{{matchers(*items)}}}" if items else metric


def parse_matchers(text: str) -> list[Matcher]:
    """The label matchers found in a selector or query, values unquoted."""
    return [(m.group(1), m.group(2), unquote(m.group(3))) for m in _MATCHER.finditer(text)]
