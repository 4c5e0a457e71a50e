# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one PromQL builder: quoting, regex alternation, selectors, and reading matchers back."""
from __future__ import annotations

import re

from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import (
    RELEASE_SERIES_LABEL,
    literals,
    name_matcher,
    one_of,
    parse_matchers,
    quote,
    selector,
    series_label,
    unquote,
)


def test_series_label() -> None:
    assert series_label("kubeinfer.io/release") == "kubeinfer_io_release" == RELEASE_SERIES_LABEL
    assert series_label("app.kubernetes.io/instance") == "app_kubernetes_io_instance"
    assert series_label("already_ok") == "already_ok"
    assert series_label("9lives") == "_9lives"


def test_quote_round_trips_backslash_quote_and_newline() -> None:
    value = 'C:\\dir "x"\nend'
    assert quote(value) == '"C:\\\\dir \\"x\\"\\nend"'
    assert unquote(quote(value)[1:-1]) == value


def test_one_of_matches_exactly_the_literals() -> None:
    regex = one_of(["a.v2", "b"])
    assert regex == "a\\.v2|b"
    assert re.fullmatch(regex, "a.v2") and re.fullmatch(regex, "b") and not re.fullmatch(regex, "aXv2")
    assert literals(regex) == ["a.v2", "b"]


def test_selectors_keep_the_matcher_order() -> None:
    assert selector("up") == "up"
    assert selector("vllm:num_requests_waiting", ("namespace", "=", "llm"), (RELEASE_SERIES_LABEL, "=", "llama")) == \
        'vllm:num_requests_waiting{namespace="llm",kubeinfer_io_release="llama"}'
    assert selector("", name_matcher(["a", "b:c"]), ("pod", "!=", "")) == '{__name__=~"a|b:c",pod!=""}'
    assert name_matcher(["a"]) == ("__name__", "=", "a")


def test_parse_matchers_reads_what_selector_wrote() -> None:
    written = selector("", ("__name__", "=", "x"), ("q", "!~", 'say "hi"\\'), (RELEASE_SERIES_LABEL, "=~", one_of(["r.1"])))
    assert parse_matchers(written) == [("__name__", "=", "x"), ("q", "!~", 'say "hi"\\'), (RELEASE_SERIES_LABEL, "=~", "r\\.1")]
