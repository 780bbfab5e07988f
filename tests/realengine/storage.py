"""Storage for the node agent: a small provisioner whose volumes are directories on the node.

The real PersistentVolume controller binds claims; what it needs from outside is a provisioner
for the claim's StorageClass (an external one, as for any CSI driver). This one creates, for
each pending claim of a class whose `provisioner` is PROVISIONER, a hostPath PersistentVolume
pinned to the node, under the agent's folder, with the claim's size and access modes; the PV
controller then binds them. A Released volume is deleted with its data when its reclaim policy
is Delete and kept when it is Retain. A claim grown in a class with allowVolumeExpansion is
resized (capacity only: a directory has no size to enforce). Claim data survives pod deletion
and rescheduling, because the volume outlives every pod that mounts it.

Two kinds, as clusters have them:
- node-local (PROVISIONER, one provisioner per node agent): the volume is pinned to its node
  (PV nodeAffinity), like a local disk; a pod that uses it can only run there.
- attachable anywhere (SHARED_PROVISIONER, one provisioner for a cluster of several nodes):
  no node affinity, like a cloud block volume that follows its pod to another node. All
  nodes are folders on this one machine, so every node can mount every such volume.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from tests.podrunner import ContainerConfigError
from tests.podrunner.environment import parse_quantity

if TYPE_CHECKING:
    from tests.realengine.node_agent import ApiClient

PROVISIONER = "podrunner.local/hostpath"
"""The `provisioner` of StorageClasses whose claims the node agent provisions (node-local)."""
SHARED_PROVISIONER = "podrunner.local/shared"
"""The `provisioner` of StorageClasses whose volumes any node mounts (multinode.py)."""

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
FRESH_VOLUME_MODE = 0o755
"""A new volume is root:root 0755, like a fresh ext4 filesystem (fsGroup opens it to pods)."""


def storage_class(
    name: str,
    *,
    default: bool = True,
    reclaim_policy: str = "Delete",
    binding_mode: str = "Immediate",
    allow_expansion: bool = True,
    provisioner: str = PROVISIONER,
) -> dict:
    """Return a StorageClass whose claims the node agent (or the shared provisioner) provisions."""
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": provisioner,
        "reclaimPolicy": reclaim_policy,
        "volumeBindingMode": binding_mode,
        "allowVolumeExpansion": allow_expansion,
    }


class HostPathProvisioner:
    """Provision, resize and reclaim hostPath volumes; resolve claims to folders.

    node_name: the node whose local volumes these are; None for volumes any node mounts
    (classes of SHARED_PROVISIONER, no node affinity).
    """

    def __init__(self, api: ApiClient, root: Path, node_name: str | None) -> None:
        """Volumes live under root (one folder per volume, named after it)."""
        self.api = api
        self.root = root
        self.node_name = node_name
        self.provisioner = PROVISIONER if node_name is not None else SHARED_PROVISIONER

    def sync(self) -> None:
        """One pass: provision pending claims, resize grown ones, reclaim released volumes."""
        classes = {
            sc["metadata"]["name"]: sc
            for sc in self.api.list("/apis/storage.k8s.io/v1/storageclasses")
            if sc.get("provisioner") == self.provisioner
        }
        if not classes:
            return
        volumes = {
            pv["metadata"]["name"]: pv
            for pv in self.api.list("/api/v1/persistentvolumes")
            if (pv["metadata"].get("annotations") or {}).get(PROVISIONED_BY) == self.provisioner
        }
        for claim in self.api.list("/api/v1/persistentvolumeclaims"):
            storage_class_name = claim["spec"].get("storageClassName")
            if storage_class_name not in classes:
                continue
            sc = classes[storage_class_name]
            phase = (claim.get("status") or {}).get("phase")
            if phase == "Pending" and not claim["spec"].get("volumeName"):
                self.provision(claim, sc)
            elif phase == "Bound" and claim["spec"].get("volumeName") in volumes:
                self.resize(claim, volumes[claim["spec"]["volumeName"]], sc)
        for pv in volumes.values():
            if (pv.get("status") or {}).get("phase") == "Released":
                self.reclaim(pv)

    def provision(self, claim: dict, sc: dict) -> None:
        """Create the hostPath PersistentVolume for a pending claim (the PV controller binds)."""
        annotations = claim["metadata"].get("annotations") or {}
        waits_for_pod = sc.get("volumeBindingMode") == "WaitForFirstConsumer"
        local = self.node_name is not None
        if local and waits_for_pod and annotations.get(SELECTED_NODE) != self.node_name:
            return
        name = f"pvc-{claim['metadata']['uid']}"
        path = self.root / name
        if not path.exists():
            path.mkdir(parents=True)
            path.chmod(FRESH_VOLUME_MODE)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: self.provisioner}},
            "spec": {
                "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
                "accessModes": claim["spec"].get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                "storageClassName": sc["metadata"]["name"],
                "volumeMode": "Filesystem",
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": claim["metadata"]["namespace"],
                    "name": claim["metadata"]["name"],
                    "uid": claim["metadata"]["uid"],
                },
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        }
        if local:
            match = {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node_name]}
            volume["spec"]["nodeAffinity"] = {
                "required": {"nodeSelectorTerms": [{"matchExpressions": [match]}]}
            }
        self.api.create("/api/v1/persistentvolumes", volume)

    def resize(self, claim: dict, pv: dict, sc: dict) -> None:
        """Grow a bound volume to its claim's new request, where the class allows expansion."""
        requested = claim["spec"]["resources"]["requests"]["storage"]
        capacity = pv["spec"]["capacity"]["storage"]
        where = (
            f"PersistentVolumeClaim {claim['metadata']['namespace']}/{claim['metadata']['name']}"
        )
        if not sc.get("allowVolumeExpansion") or parse_quantity(requested, where) <= parse_quantity(
            capacity, where
        ):
            return
        self.api.merge_patch(
            f"/api/v1/persistentvolumes/{pv['metadata']['name']}",
            {"spec": {"capacity": {"storage": requested}}},
        )
        self.api.merge_patch(
            f"/api/v1/namespaces/{claim['metadata']['namespace']}/persistentvolumeclaims/"
            f"{claim['metadata']['name']}/status",
            {
                "status": {
                    "capacity": {"storage": requested},
                    "allocatedResources": {"storage": requested},
                    "allocatedResourceStatuses": None,
                    "conditions": None,
                }
            },
        )

    def reclaim(self, pv: dict) -> None:
        """Delete a released volume and its data when its policy is Delete (Retain keeps both)."""
        if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = Path(pv["spec"]["hostPath"]["path"])
        if path.parent == self.root:
            shutil.rmtree(path, ignore_errors=True)
        self.api.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")

    def claim_dir(self, namespace: str, claim_name: str) -> Path:
        """Return the folder of a claim's volume; ContainerConfigError (FailedMount) if unbound."""
        claim = self.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}")
        if claim is None:
            msg = f'persistentvolumeclaim "{claim_name}" not found'
            raise ContainerConfigError(msg)
        volume_name = claim["spec"].get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            msg = f'persistentvolumeclaim "{claim_name}" is not bound'
            raise ContainerConfigError(msg)
        pv = self.api.get(f"/api/v1/persistentvolumes/{volume_name}")
        source = (pv or {}).get("spec", {})
        local = source.get("hostPath") or source.get("local")
        if local is None:
            msg = f"persistentvolume {volume_name} is neither hostPath nor local"
            raise ContainerConfigError(msg)
        path = Path(local["path"])
        if not path.is_dir():
            msg = f"persistentvolume {volume_name}: {path} does not exist on the node"
            raise ContainerConfigError(msg)
        return path
