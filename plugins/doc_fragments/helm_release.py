# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Notes shared by the modules that install a chart through the one Helm-release lifecycle (module_utils/_helm_release).
    DOCUMENTATION = r"""
options: {}
notes:
  - The release is read from the object helm keeps each revision in - a Secret C(sh.helm.release.v1.<release>.v<revision>)
    labelled C(owner=helm) in the release's namespace, or a ConfigMap with C(HELM_DRIVER=configmap) - with one metadata-only
    list and one get, not through C(helm list) and C(helm get values). The identity needs C(list) and C(get) on C(secrets)
    there, as helm itself does. With C(HELM_DRIVER=sql) or C(memory) the module asks C(helm list) and C(helm get values).
  - While C(helm upgrade --install) (and an O(atomic) undo) runs, the module holds a C(coordination.k8s.io/v1) Lease
    C(kubeinfer-helm-<release>) in the release's namespace, renewed every 10 seconds and deleted when helm is done. It
    records the revision helm is making. The identity needs C(get), C(create), C(patch) and C(delete) on C(leases).
  - A release left C(pending-install), C(pending-upgrade) or C(pending-rollback) by a run that died (the API server went
    away, the job was killed) is recovered by the next run once that Lease has expired (30 seconds after its last
    renewal; the module waits for it) - rolled back to the revision before, or uninstalled when its first install was cut
    off, then upgraded. A pending release that no such Lease names (a C(helm) command running now, another tool) is
    refused with the status, and nothing is changed. Check mode only reports the recovery it would make.
"""
