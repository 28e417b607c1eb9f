"""The Kubernetes versions the docker/k8s manifests are validated against (kubernetes-validate's bundled schemas)."""

import kubernetes_validate

#: The oldest and the newest Kubernetes that the bundled schemas cover.
VERSIONS: list[str] = sorted({kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()})
