"""The deployment target: an explicit Kubernetes provider and the namespace.

Default providers are disabled in Pulumi.yaml, so every object must come through this
provider: a stack can never deploy to whatever context the kubeconfig happens to point at.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.deployed import guard_in_place_changes
from components.naming import broker_client_labels, labels, object_name
from components.settings import StackSettings


class ClusterTarget(pulumi.ComponentResource):
    """The provider bound to the stack's kube context and namespace, plus the namespace itself."""

    def __init__(
        self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("celery-redis:index:ClusterTarget", name, None, opts)
        # Every object goes through this provider, and the provider waits for the judgement of
        # changes that cannot be made in place: a refusal comes before any object is touched.
        in_place = guard_in_place_changes(settings)
        self.provider = k8s.Provider(
            f"{name}-provider",
            context=settings.kube_context,
            namespace=in_place.apply(lambda _: settings.namespace),
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.namespace_name: pulumi.Output[str] = pulumi.Output.from_input(settings.namespace)
        self._namespace: list[pulumi.Resource] = []
        if settings.create_namespace:
            namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=settings.namespace,
                    labels=labels(settings, "namespace", settings.namespace),
                ),
                # `pulumi destroy` must not take the broker's queued tasks with it: deleting a
                # namespace deletes its claims whatever their retention policy says. So the
                # namespace outlives the stack (README: deleting the data on purpose).
                opts=pulumi.ResourceOptions(
                    parent=self, provider=self.provider, retain_on_delete=True
                ),
            )
            self.namespace_name = namespace.metadata.name
            self._namespace = [namespace]
        self.client_ingress_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-clients-no-ingress",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=object_name(settings.name_prefix, "clients-no-ingress"),
                namespace=settings.namespace,
                labels=labels(settings, "network-policy"),
            ),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                # Workers and check pods serve nothing: no inbound traffic at all. Their egress
                # stays open, since tasks call whatever services the application needs.
                pod_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels=broker_client_labels(settings)
                ),
                policy_types=["Ingress"],
            ),
            opts=pulumi.ResourceOptions(
                parent=self, provider=self.provider, depends_on=self._namespace
            ),
        )
        self.register_outputs({"namespace": self.namespace_name})

    def child_options(self) -> pulumi.ResourceOptions:
        """Return options for components that create objects in this target.

        They carry the provider and order the objects after the namespace.
        """
        return pulumi.ResourceOptions(providers={"kubernetes": self.provider}, depends_on=[self])
