#!/bin/sh
# What the datapool_pipeline image installs, in one place: the Dockerfile runs this script in both of its
# stages, and scripts/check_image.sh runs it the same way into a fresh virtualenv.
#
#   install.sh wheels SRC WHEELDIR   build stage (has a compiler): wheels of torch, torchvision, this package
#                                    with the [postgres,k8s] extras and every dependency into WHEELDIR;
#                                    packages without a wheel for the platform (hnswlib) are compiled here
#   install.sh install WHEELDIR      runtime stage: installs the package and its extras from WHEELDIR only
#                                    (no index, no compiler)
#
# Environment:
#   PYTHON           interpreter whose pip is used (default: python3)
#   TORCH_INDEX_URL  index that torch and torchvision come from. The CPU image passes PyTorch's CPU wheel
#                    index (CPU-only builds, no CUDA libraries); empty: pip's configured index, whose
#                    Linux torch wheels are CUDA builds (a GPU image, or a machine with torch on local disk)
#   TORCH_PACKAGES   torch pins (default below; keep them inside pyproject.toml's torch/torchvision ranges)
set -eu

EXTRAS="postgres,k8s"
DEFAULT_TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"
PYTHON="${PYTHON:-python3}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
TORCH_PACKAGES="${TORCH_PACKAGES:-$DEFAULT_TORCH_PACKAGES}"

usage() {
  echo "usage: install.sh wheels SRC WHEELDIR | install.sh install WHEELDIR" >&2
  exit 2
}

pip() {
  "$PYTHON" -m pip --disable-pip-version-check "$@"
}

case "${1:-}" in
  wheels)
    [ $# -eq 3 ] || usage
    src="$2"
    wheels="$3"
    mkdir -p "$wheels"
    # 1. torch and torchvision (and their dependencies) from the torch index.
    if [ -n "$TORCH_INDEX_URL" ]; then
      # shellcheck disable=SC2086  # TORCH_PACKAGES is a list of requirements
      pip wheel --wheel-dir "$wheels" --index-url "$TORCH_INDEX_URL" $TORCH_PACKAGES
    else
      # shellcheck disable=SC2086
      pip wheel --wheel-dir "$wheels" $TORCH_PACKAGES
    fi
    # 2. Pin exactly the torch builds just fetched (e.g. 2.14.1+cpu), so resolving the package cannot swap
    #    them for another build of the same version from the default index.
    constraints="$wheels/torch-constraints.txt"
    : > "$constraints"
    for whl in "$wheels"/torch-*.whl "$wheels"/torchvision-*.whl; do
      [ -e "$whl" ] || { echo "install.sh: no torch/torchvision wheel in $wheels" >&2; exit 1; }
      base="$(basename "$whl")"
      name="${base%%-*}"
      rest="${base#*-}"
      echo "$name==${rest%%-*}" >> "$constraints"
    done
    # 3. The package with its deployment extras and every dependency (sdists are built into wheels here).
    pip wheel --wheel-dir "$wheels" --find-links "$wheels" --constraint "$constraints" "$src[$EXTRAS]"
    ;;
  install)
    [ $# -eq 2 ] || usage
    wheels="$2"
    pip install --no-index --find-links "$wheels" --constraint "$wheels/torch-constraints.txt" \
      "datapool_pipeline[$EXTRAS]"
    pip check
    ;;
  *)
    usage
    ;;
esac
