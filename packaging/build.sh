#!/usr/bin/env bash
# Build the one-folder app bundle dist/medview/ with PyInstaller, then write a size report.
#
#   bash packaging/build.sh            # uses ./.venv (created by `make`), the torch it has
#   PYTHON=/path/to/python bash packaging/build.sh
#
# The bundle takes whatever torch the build environment has: the default (CUDA) torch gives
# a bundle that runs on NVIDIA GPUs and on the CPU; a CPU-only torch in the build
# environment gives a much smaller CPU-only bundle (see packaging/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

"$PY" -m pip install -q -e '.[package]'
rm -rf dist/medview build/pyinstaller
"$PY" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/medview.spec
cp packaging/medview.desktop packaging/install-desktop-entry.sh medview/gui/medview.svg \
    dist/medview/
"$PY" packaging/bundle_report.py dist/medview | tee dist/medview-size.txt
