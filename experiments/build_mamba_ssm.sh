#!/usr/bin/env bash
# Build mamba-ssm 2.3.2.post1's CUDA selective scan (the peer of experiments/bench_scan.py) from its sdist on
# the GPU machine, for sm_90 (H100, H200) only, into a folder to put on PYTHONPATH:
#
#   bash experiments/build_mamba_ssm.sh SDIST_DIR DEST     # then PYTHONPATH=DEST:$PYTHONPATH
#
# SDIST_DIR holds mamba_ssm-2.3.2.post1.tar.gz and the wheels of einops, ninja, setuptools, wheel and packaging
# (its setup.py imports wheel; a venv has no setuptools). The machine has no network: fetch them beforehand, the
# sdist from PyPI's simple index (`pip download` would try to build it). They go into DEST, and the machine's own
# python3 (torch 2.11 + cu130) and nvcc build the extension: no build isolation, no index. setup.py compiles for
# ten GPU architectures whatever TORCH_CUDA_ARCH_LIST says; the build keeps sm_90 only. MAMBA_FORCE_BUILD=TRUE
# stops it looking for a prebuilt wheel online.
set -euo pipefail
SRC=$(realpath "${1:?SDIST_DIR}"); DEST=$(realpath -m "${2:?DEST}")
work=$(mktemp -d)
tar xzf "$SRC"/mamba_ssm-2.3.2.post1.tar.gz -C "$work"
cd "$work"/mamba_ssm-2.3.2.post1
python3 - <<'PY'
import re
from pathlib import Path

p = Path("setup.py")
s = p.read_text()
pair = re.compile(r'\n( *)cc_flag\.append\("-gencode"\)\n *cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)')
kept = [m.group(2) for m in pair.finditer(s) if m.group(2) == "90"]
s = pair.sub(lambda m: m.group(0) if m.group(2) == "90" else f"\n{m.group(1)}pass", s)
compile(s, "setup.py", "exec")
if kept != ["90"] or s.count('"-gencode"') != 1:
    raise SystemExit("setup.py: the -gencode list is not the one this script knows (mamba-ssm 2.3.2.post1)")
p.write_text(s)
PY
python3 -m pip install -q --no-index --no-deps --target "$DEST" "$SRC"/*.whl
export PATH="$DEST/bin:$PATH" PYTHONPATH="$DEST:${PYTHONPATH:-}"
t=$SECONDS
MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  python3 -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir --target "$DEST" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
echo "built in $((SECONDS - t)) s into $DEST"
# the package's __init__ imports its language models, which need transformers (not on the machine); the benchmark
# needs only mamba_ssm.ops.selective_scan_interface and the extension, so the installed __init__ keeps the version
echo '__version__ = "2.3.2.post1"' > "$DEST/mamba_ssm/__init__.py"
cd / && python3 -c "import torch, selective_scan_cuda, mamba_ssm.ops.selective_scan_interface as m; print('mamba-ssm', m.__file__)"
