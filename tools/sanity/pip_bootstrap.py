"""Offline stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test creates an empty virtualenv per sanity test and runs a bootstrap
script from ci-files.testing.ansible.com to put pip into it. That host is not
reachable from our CI machine, but PyPI is. This script gives the same result:
it installs the interpreter's bundled pip with ensurepip, then runs
`pip install` with the arguments ansible-test passes (pip pinned to its
version), dropping the two options only the original script knows.

ansible-test runs pip with no config file and a bare environment, so the
system CA store is named explicitly (machines behind a TLS-inspecting proxy
trust it only through the system store). The pip it installs (24.2 or later)
uses the system store by default for the installs that follow.
"""
from __future__ import annotations

import ensurepip
import os
import ssl
import subprocess
import sys

ONLY_IN_BOOTSTRAP = {"--no-setuptools", "--no-wheel"}


def system_ca_bundle() -> list[str]:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return ["--cert", candidate]
    return []


ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ONLY_IN_BOOTSTRAP]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + system_ca_bundle() + args))
