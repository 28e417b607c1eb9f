#!/usr/bin/env bash
# `make docker-smoke`: build the serving image from ./Dockerfile, run it, wait for /readyz, classify
# a PNG, scrape /metrics, run the image's own HEALTHCHECK, check that it runs as non-root without
# torch or timm, stop it (gracefully: exit code 0) and remove it. Then (podman) run the Kubernetes
# Deployment and Service of docker/k8s with `podman kube play`, the same checks over the port the
# Service targets, and `podman kube down`.
#
# Engine: docker where a Docker engine answers, else podman, which needs no daemon and builds with
# buildah's chroot isolation, so it also works inside a CI container. Environment knobs:
#   ENGINE           docker | podman (default: detected)
#   BASE_IMAGE       the base (default: the Dockerfile's). If the default cannot be pulled (no
#                    registry in reach), docker/local-base.sh builds a Debian bookworm base once with
#                    debootstrap; later runs find it in the image store.
#   WITH_CUDA_LIBS   0 (default here: a CPU smoke need not build 2.2 GB of CUDA libraries) or 1
#   DEMO             tiny (default) or dinov2: the model baked in (dinov2 installs torch in a builder stage)
#   SMOKE_IMAGE      tag to build (default localhost/dynadapter:smoke)
#   SMOKE_PORT       host port to publish (default 18000)
#   BUILD_TIMEOUT_S  cap on the image build (default 1500); READY_TIMEOUT_S cap on start-up (120)
#   PYTHON           the host's Python for the HTTP checks (default python3; standard library only)
#   SMOKE_APT_INSTALL  1 (default): as root on Debian/Ubuntu, apt-get install a missing podman,
#                    runc or debootstrap; 0: only say what is missing
#   PIP_CA_BUNDLE    CA bundle for pip in a podman build (default /etc/ssl/certs/ca-certificates.crt
#                    when it exists: where TLS to PyPI is intercepted, pip must trust the host's CAs)
#   SMOKE_KUBE       1 (default): also run docker/k8s with `podman kube play` (podman only); 0: skip
#   SMOKE_KUBE_PORT  host port for the pod's http port where podman has `kube play --publish`
#                    (>= 4.5; default 18080). podman 4.3/4.4 publish each containerPort on the same
#                    host port (8000, 8001), on all addresses.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
say() { printf 'docker-smoke [%4ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

image=${SMOKE_IMAGE:-localhost/dynadapter:smoke}
port=${SMOKE_PORT:-18000}
cuda=${WITH_CUDA_LIBS:-0}
demo=${DEMO:-tiny}
build_timeout=${BUILD_TIMEOUT_S:-1500}
ready_timeout=${READY_TIMEOUT_S:-120}
python=${PYTHON:-python3}
name=dynadapter-smoke-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/dynadapter-smoke.XXXXXX")
engine=${ENGINE:-}
global=()  # podman's global options (before `run`), set below where this machine needs them
kube_yaml=  # set once `podman kube play` has run: `podman kube down` it on the way out
cleanup() {
  [[ -z $engine ]] || "$engine" "${global[@]}" rm -f "$name" >/dev/null 2>&1 || true
  [[ -z $kube_yaml ]] || podman "${global[@]}" kube down "$kube_yaml" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh Debian/Ubuntu CI machine (root, apt) gets the tools it lacks; anywhere else, say which.
need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && [[ ${SMOKE_APT_INSTALL:-1} == 1 ]]; then
    say "installing ${missing[*]} with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; die "apt-get install ${missing[*]}"; }
  else
    die "missing ${missing[*]} (Debian: apt-get install ${missing[*]})"
  fi
}

if [[ -z $engine ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  else
    engine=podman
  fi
fi
need "$engine" "$python"
if [[ $engine == podman ]]; then
  need runc  # the fallback runtime where crun cannot start containers (see below)
fi

# --- base image --------------------------------------------------------------------------------
default_base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
base=${BASE_IMAGE:-$default_base}
local_base=localhost/dynadapter-base:bookworm-py311
if "$engine" image inspect "$base" >/dev/null 2>&1; then
  say "base $base (in the image store)"
elif timeout 180 "$engine" pull -q "$base" >/dev/null 2>&1; then
  say "base $base (pulled)"
elif [[ -n ${BASE_IMAGE:-} ]]; then
  die "BASE_IMAGE=$base cannot be found or pulled"
elif "$engine" image inspect "$local_base" >/dev/null 2>&1; then
  say "base $base cannot be pulled; using $local_base, built earlier with debootstrap"
  base=$local_base
else
  say "base $base cannot be pulled; building $local_base with debootstrap (once, ~2 min)"
  need debootstrap
  timeout 900 docker/local-base.sh "$engine" "$local_base" || die "could not build a local base image"
  base=$local_base
fi

# --- build -------------------------------------------------------------------------------------
build=(build --file Dockerfile --tag "$image" --build-arg "BASE_IMAGE=$base" --build-arg "WITH_CUDA_LIBS=$cuda" --build-arg "DEMO=$demo")
if [[ $engine == podman ]]; then
  # --format docker: the OCI image format has no HEALTHCHECK, and buildah would drop it.
  build+=(--isolation chroot --format docker)
  ca=${PIP_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
  if [[ -n $ca && -f $ca ]]; then
    # Over the base's own bundle, read-only and only while RUN steps execute: nothing lands in a layer.
    build+=(--volume "$(realpath "$ca"):/etc/ssl/certs/ca-certificates.crt:ro"
            --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  fi
fi
say "building $image with $engine (WITH_CUDA_LIBS=$cuda, DEMO=$demo); log: $work/build.log"
build_start=$SECONDS
if ! DOCKER_BUILDKIT=1 timeout "$build_timeout" "$engine" "${build[@]}" . >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  die "the image did not build (within ${build_timeout} s)"
fi
build_s=$((SECONDS - build_start))
size_mb=$(( $("$engine" image inspect --format '{{.Size}}' "$image") / 1000000 ))
say "built in ${build_s} s; image size ${size_mb} MB"

# --- run ---------------------------------------------------------------------------------------
extra=()   # run options this machine needs
if [[ $engine == docker ]]; then
  extra=(--health-interval 2s)  # let Docker's own health status turn over within the smoke
else
  # Sandboxed CI machines may forbid crun's cgroup set-up or raising rlimits: try the plain run,
  # then explicit limits, then runc, and keep the first that starts a container.
  limits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if podman run --rm "$image" python -c pass >/dev/null 2>&1; then
    :
  elif podman run --rm "${limits[@]}" "$image" python -c pass >/dev/null 2>&1; then
    extra=("${limits[@]}")
  elif command -v runc >/dev/null && podman --runtime runc run --rm "${limits[@]}" "$image" python -c pass >/dev/null 2>&1; then
    global=(--runtime runc)
    extra=("${limits[@]}")
  else
    podman run --rm "$image" python -c pass || true
    die "podman cannot start a container here"
  fi
  [[ ${#global[@]} -eq 0 && ${#extra[@]} -eq 0 ]] || say "this machine needs: podman ${global[*]} run ${extra[*]}"
fi
# podman without systemd complains that it cannot schedule the HEALTHCHECK timer: keep such
# messages in a file (the check below runs the HEALTHCHECK itself).
engine_log=$work/engine.log
"$engine" "${global[@]}" run --detach --name "$name" --publish "127.0.0.1:$port:8000" "${extra[@]}" "$image" \
  >/dev/null 2>>"$engine_log" || { cat "$engine_log" >&2; die "the container did not start"; }
show_logs() { "$engine" logs "$name" 2>&1 | tail -40 >&2; }

run_start=$SECONDS
"$python" docker/smoke_client.py "http://127.0.0.1:$port" --ready-timeout "$ready_timeout" \
  || { show_logs; die "HTTP checks"; }

if [[ $engine == podman ]]; then
  podman "${global[@]}" healthcheck run "$name" >/dev/null || { show_logs; die "the image's HEALTHCHECK fails"; }
else
  for _ in $(seq 60); do
    health=$(docker inspect --format '{{.State.Health.Status}}' "$name")
    [[ $health == healthy ]] && break
    sleep 1
  done
  [[ $health == healthy ]] || { show_logs; die "Docker reports the container $health"; }
fi
say "HEALTHCHECK healthy"

"$engine" "${global[@]}" exec "$name" python -c '
import importlib.util, os
assert os.getuid() != 0, "the service runs as root"
present = [m for m in ("torch", "timm") if importlib.util.find_spec(m)]
assert not present, f"the serving image has {present}"
' || die "image contents"
say "runs as uid $("$engine" "${global[@]}" exec "$name" id -u), without torch or timm"
"$engine" "${global[@]}" exec -i "$name" python - <docker/smoke_grpc.py || { show_logs; die "gRPC checks"; }

"$engine" "${global[@]}" stop -t 30 "$name" >/dev/null 2>>"$engine_log"
code=$("$engine" inspect --format '{{.State.ExitCode}}' "$name")
[[ $code == 0 ]] || { show_logs; die "exit code $code after SIGTERM (expected a graceful 0)"; }
say "stopped gracefully; run checks took $((SECONDS - run_start)) s"

# --- the Kubernetes manifests, run by podman kube play ----------------------------------------
# The same docker/k8s/deployment.yaml and service.yaml, with two substitutions only: the image
# reference (kustomize's `images:` sets it in a cluster) becomes the smoke build's tag, and replicas
# becomes 1 (on one host every replica would publish the same host port). podman has no Service
# proxy: it publishes the container's ports, so the checks go to the port the Service targets.
kube_s=skipped
if [[ ${SMOKE_KUBE:-1} == 0 ]]; then
  say "podman kube play: skipped (SMOKE_KUBE=0)"
elif [[ $engine != podman ]]; then
  say "podman kube play: skipped (the image is in $engine's store; ENGINE=podman runs it)"
else
  kube_start=$SECONDS
  deployment=docker/k8s/deployment.yaml
  service=docker/k8s/service.yaml
  play=$work/kube.yaml
  { sed -e "s|^\( *image:\) dynadapter\$|\1 $image|" -e 's|^\(  replicas:\) [0-9][0-9]*$|\1 1|' "$deployment"
    echo ---
    cat "$service"; } >"$play"
  grep -q "^ *image: $image\$" "$play" && grep -q '^  replicas: 1$' "$play" \
    || die "could not point $deployment at $image with one replica"
  # The Service's first port targets a named container port; find its number in the Deployment.
  target=$(sed -n 's/^ *targetPort: *//p' "$service" | head -1)
  container_port=$(awk -v port="$target" '$1 == "-" && $2 == "name:" && $3 == port { getline; print $2; exit }' "$deployment")
  [[ $container_port =~ ^[0-9]+$ ]] || die "the Service's targetPort $target is no container port of $deployment"
  kube=(kube play)
  if podman kube play --help 2>/dev/null | grep -q -- '--publish '; then
    kube_port=${SMOKE_KUBE_PORT:-18080}
    kube+=(--publish "127.0.0.1:$kube_port:$container_port")
  else
    kube_port=$container_port  # podman < 4.5 publishes each containerPort on that host port
  fi
  if [[ ${#extra[@]} -gt 0 ]]; then
    # kube play takes no --ulimit: the same limits as containers.conf defaults, for this run only.
    printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n' >"$work/containers.conf"
    export CONTAINERS_CONF=$work/containers.conf
  fi
  kube_yaml=$play
  podman "${global[@]}" "${kube[@]}" "$play" >"$work/kube.log" 2>&1 || { cat "$work/kube.log" >&2; die "podman kube play"; }
  pod=$(awk '/^Pod:/ { getline; print; exit }' "$work/kube.log")
  kube_ctr=$(podman ps -a --filter "pod=$pod" --format '{{.Names}}' | grep -- '-dynadapter$' | head -1)
  [[ -n $kube_ctr ]] || { cat "$work/kube.log" >&2; die "podman kube play started no dynadapter container"; }
  service_port=$(sed -n 's/^ *port: *//p' "$service" | head -1)
  say "podman kube play: pod $(podman pod inspect --format '{{.Name}}' "$pod"), container $kube_ctr;" \
    "Service port $service_port -> targetPort $target = containerPort $container_port, reached at 127.0.0.1:$kube_port"
  kube_logs() { podman logs "$kube_ctr" 2>&1 | tail -40 >&2; }
  # /readyz is the Deployment's readiness probe: the client waits for it before classifying.
  grep -q 'path: /readyz' "$deployment" || die "$deployment has no /readyz readiness probe"
  "$python" docker/smoke_client.py "http://127.0.0.1:$kube_port" --ready-timeout "$ready_timeout" \
    || { kube_logs; die "HTTP checks on the kube-played pod"; }
  podman "${global[@]}" exec -i "$kube_ctr" python - <docker/smoke_grpc.py || { kube_logs; die "gRPC checks on the pod"; }
  # The manifest's securityContext holds: its runAsUser, and a read-only root file system.
  uid=$(podman "${global[@]}" exec "$kube_ctr" id -u)
  [[ $uid == $(sed -n 's/^ *runAsUser: *//p' "$deployment" | head -1) ]] || die "the pod runs as uid $uid"
  [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$kube_ctr") == true ]] \
    || die "the pod's root file system is writable (readOnlyRootFilesystem)"
  podman "${global[@]}" kube down "$play" >/dev/null 2>>"$engine_log" || die "podman kube down"
  kube_yaml=
  kube_s=$((SECONDS - kube_start))
  say "podman kube play: ready, classified over REST and gRPC, scraped as uid $uid on a read-only root; torn down in ${kube_s} s total"
fi
say "OK: build ${build_s} s, image ${size_mb} MB, kube play ${kube_s} s, total $((SECONDS - t0)) s"
