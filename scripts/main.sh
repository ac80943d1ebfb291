#!/usr/bin/env bash
# The main job on a fresh machine: install glann_ext into ./.venv, fetch Fashion-MNIST from Debian's
# package (when it is not there yet), train GLANN with the 2-core laptop preset (a few minutes), and write
# samples, reconstructions and interpolations into runs/fashion-laptop/. Rerunning resumes or reuses the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RUN=${RUN:-runs/fashion-laptop}
if [ ! -e /usr/share/datasets/fashion-mnist ] && [ -z "${GLANN_DATA:-}" ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
# The build tools in the venv and an editable install: a rerun rebuilds only what changed (ninja, in build/;
# an isolated build reconfigured and recompiled everything, 90 s), and Python started in this checkout
# imports the installed package (a plain install left it the source tree, which has no compiled module).
pip install -q scikit-build-core pybind11 cmake ninja
pip install -q --no-build-isolation -e .
glann train --preset laptop --dataset fashion-mnist --out "$RUN"
glann sample --run "$RUN" -n 64 --grid "$RUN/samples.png"
glann interpolate --run "$RUN" --space latent --rows 6 --steps 10 --grid "$RUN/interpolation.png"
echo "samples: $RUN/samples.png  reconstructions: $RUN/reconstructions.png  interpolation: $RUN/interpolation.png"
