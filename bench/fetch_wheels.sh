#!/usr/bin/env bash
# Downloads the Python 3.12 wheels that the GPU image lacks (grain, array-record, ml-collections,
# tensorflow-datasets and the dependencies of theirs it does not have) into the git-ignored .whl/ folder, so a
# device run can carry them and install them offline: bench/gpu_suite.sh does
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#
#   bash bench/fetch_wheels.sh [DEST]        # DEST defaults to .whl (relative to the repository root)
#
# Versions: the set that passed `pip check` beside jax 0.11.2 on Python 3.12 (shared notes, environment facts).
# `promise` is published only as a source archive: it is built here into a pure-Python wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
python="${PYTHON:-python3}"
mkdir -p "$dest"

binary=(
  grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 tensorflow-datasets==4.9.10
  portpicker==1.6.0 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 docstring-parser==0.18.0
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2
  importlib-resources==7.1.0 tensorboardX==2.6.5
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${binary[@]}"
"$python" -m pip wheel -q --no-deps -w "$dest" promise==2.3

# Keep one version of each distribution: two stop the offline install.
dupes=$(find "$dest" -name '*.whl' -printf '%f\n' | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "fetch_wheels: more than one wheel of: $dupes (remove the old ones from $dest)" >&2
  exit 1
fi
du -ch "$dest"/*.whl | tail -n 1
ls -s "$dest"
