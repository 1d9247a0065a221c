#!/usr/bin/env bash
# Build (once) and print the path of relaxbench's virtual environment.
#
# The venv lives outside the checkout, keyed by the hash of requirements.lock, so every clone of the same
# lock file reuses one 6.1 GB environment: RELAXBENCH_VENV_ROOT (default ~/.cache/relaxbench).
# System packages: gfortran (py3nj, needed by escnn), chromium (the report's browser test) and
# dataset-fashion-mnist (the rotfmnist task's IDX files) are installed with apt-get when it is available and we
# are root; otherwise we say what is missing. For `make test` (RELAXBENCH_TEST_PACKAGES=1) also slurm-wlm and
# munge: the one-node SLURM cluster of tests/workflow/test_slurm.py (not installed for other targets: on a
# machine with systemd, Debian starts their services).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
lock="$here/requirements.lock"
root=${RELAXBENCH_VENV_ROOT:-$HOME/.cache/relaxbench}
key=$(sha256sum "$lock" | cut -c1-16)
venv="$root/venv-$key"
PY=${PYTHON:-python3}

need_apt=()
command -v gfortran >/dev/null 2>&1 || need_apt+=(gfortran)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
if [ "${RELAXBENCH_TEST_PACKAGES:-0}" = 1 ]; then
  have_sbin() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
  have_sbin slurmctld && have_sbin slurmd || need_apt+=(slurm-wlm)
  have_sbin munged || need_apt+=(munge)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${need_apt[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >&2
  else
    echo "setup: missing system packages: ${need_apt[*]} (install them with your package manager;" >&2
    echo "       gfortran is required to build py3nj for escnn; chromium only for the browser test;" >&2
    echo "       dataset-fashion-mnist only for the rotfmnist task; slurm-wlm and munge only for the SLURM test)" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "setup: building $venv from requirements.lock (one time, several minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$lock" >&2
  touch "$venv/.complete"
fi
# Point the venv's relaxbench at this checkout (cheap; re-run by every make target).
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$here" >&2
echo "$venv"
