# Source this on a GPU machine that has no package index and only CUDA 13 libraries (the
# GPU machine BENCHMARKS.md's GPU figures come from) to give benchmarks/gpu/run.sh a
# TensorFlow that runs there:
#
#   source benchmarks/gpu/offline_env.sh PARTS_DIR
#
# PARTS_DIR holds part-* files: pieces of one zstd-compressed tar of a Python 3.12 site
# directory, made by benchmarks/gpu/pack_offline_env.sh on a machine with pip (TensorFlow
# 2.21.0's CUDA wheel and what it imports, Keras, keras-hub, NVIDIA's CUDA 12 runtime and
# ptxas). They were carried over in pieces because the transfer to that machine takes
# 64 MiB at a time.
#
# TensorFlow 2.21 is built for CUDA 12 and looks for libcublas.so.12, libcufft.so.11 and
# so on; that machine has CUDA 13's libraries (PyTorch's). The CUDA 12 runtime comes with
# the site directory; for the others a directory of links gives the CUDA 13 files the
# CUDA 12 names. That is not a supported setup: benchmarks/gpu/probe.py checks the
# matmuls against NumPy before any figure is taken.
#
# Sets PYTHONPATH, LD_LIBRARY_PATH, PATH and XLA_FLAGS.

parts=${1:?usage: source benchmarks/gpu/offline_env.sh PARTS_DIR}
site=${OFFLINE_SITE:-/tmp/offline-site}
if [ ! -e "$site/.complete" ]; then
    rm -rf "$site" && mkdir -p "$site"
    if command -v zstd >/dev/null; then
        cat "$parts"/part-* | zstd -d -q --long=27 | tar -x -C "$site"
    else  # Python's zstandard, carried unpacked beside the parts
        cat "$parts"/part-* | python3 -c 'import sys; sys.path.insert(0, sys.argv[1])
import zstandard
zstandard.ZstdDecompressor(max_window_size=1 << 27).copy_stream(sys.stdin.buffer, sys.stdout.buffer)' "$parts" | tar -x -C "$site"
    fi && touch "$site/.complete"
fi
echo "offline site: $(du -sh "$site" | cut -f1) in $site"

compat=$site/.cuda12-names
mkdir -p "$compat"
libdirs=$(find /usr/local /opt /usr/lib /usr/lib64 -xdev \
    \( -name 'libcublas.so.*' -o -name 'libcudnn.so.*' -o -name 'libcufft.so.*' \
    -o -name 'libcusolver.so.*' -o -name 'libcusparse.so.*' -o -name 'libcurand.so.*' \
    -o -name 'libnccl.so.*' -o -name 'libnvJitLink.so.*' \) \
    -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ' ')
libdirs=${libdirs% }
echo "CUDA library folders: ${libdirs:-none found}"

_link() {  # _link NAME CANDIDATE...: NAME in $compat points to the first candidate found
    local name=$1 candidate found
    shift
    [ -n "$libdirs" ] || return 0  # (find with no folder would search the current one)
    for candidate in "$@"; do
        # shellcheck disable=SC2086
        found=$(find $libdirs -maxdepth 1 -name "$candidate" 2>/dev/null | sort -V | tail -n 1)
        if [ -n "$found" ]; then
            ln -sf "$found" "$compat/$name"
            echo "  $name -> $found"
            return 0
        fi
    done
    echo "  $name: none of $* found"
}
_link libcublas.so.12 libcublas.so.12 libcublas.so.13
_link libcublasLt.so.12 libcublasLt.so.12 libcublasLt.so.13
_link libcufft.so.11 libcufft.so.11 libcufft.so.12
_link libcusolver.so.11 libcusolver.so.11 libcusolver.so.12
_link libcusparse.so.12 libcusparse.so.12
_link libcurand.so.10 libcurand.so.10
_link libnvJitLink.so.12 libnvJitLink.so.12 libnvJitLink.so.13
_link libnccl.so.2 libnccl.so.2
_link libcupti.so.12 libcupti.so.12 libcupti.so.13
for lib in libcudnn.so.9 libcudnn_graph.so.9 libcudnn_ops.so.9 libcudnn_cnn.so.9 \
    libcudnn_adv.so.9 libcudnn_engines_precompiled.so.9 \
    libcudnn_engines_runtime_compiled.so.9 libcudnn_heuristic.so.9; do
    _link "$lib" "$lib"
done

export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
LD_LIBRARY_PATH=$compat:$site/nvidia/cuda_runtime/lib${libdirs:+:${libdirs// /:}}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
export PATH=$site/nvidia/cuda_nvcc/bin:$PATH
export XLA_FLAGS="--xla_gpu_cuda_data_dir=$site/nvidia/cuda_nvcc${XLA_FLAGS:+ $XLA_FLAGS}"
