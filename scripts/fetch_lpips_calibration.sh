#!/usr/bin/env bash
# Download pyiqa 0.1.16's sdist from PyPI and extract its LPIPS calibration images (ResultsCalibra/) into DIR,
# then print the absolute path of ResultsCalibra for WMBENCH_PYIQA_CALIBRA:
#
#   export WMBENCH_PYIQA_CALIBRA="$(scripts/fetch_lpips_calibration.sh "$(mktemp -d)")"
#   pytest tests/test_metrics.py -k published
#
# The images are not part of wmbench (dataset licence); only pip is used and nothing from the sdist is run
# beyond pip's own metadata step.  PYTHON selects the interpreter whose pip is used (default: python).
set -euo pipefail
dest="${1:?usage: fetch_lpips_calibration.sh DIR}"
py="${PYTHON:-python}"
mkdir -p "$dest"
"$py" -m pip download --quiet --no-deps --no-binary :all: pyiqa==0.1.16 -d "$dest" >&2
tar -xzf "$dest/pyiqa-0.1.16.tar.gz" -C "$dest" pyiqa-0.1.16/ResultsCalibra
cd "$dest/pyiqa-0.1.16/ResultsCalibra" && pwd
