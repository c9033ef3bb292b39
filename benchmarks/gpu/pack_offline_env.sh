#!/usr/bin/env bash
# Makes the pieces that benchmarks/gpu/offline_env.sh unpacks on a GPU machine without a
# package index: a Python 3.12 site directory with TensorFlow 2.21.0's CUDA wheel, Keras,
# keras-hub and what they import, NVIDIA's CUDA 12 runtime and ptxas + libdevice (for
# XLA), as one zstd-compressed tar split into pieces of at most PIECE bytes.
#
#   benchmarks/gpu/pack_offline_env.sh OUTPUT_DIR [PIECE]     # PIECE default 60 MiB
#
# Run it on an x86-64 Linux machine with pip access (the wheels are downloaded for
# CPython 3.12 whatever Python runs pip). Leaves OUTPUT_DIR/part-00, part-01, ... and
# OUTPUT_DIR/zstandard (Python's zstandard, unpacked, 12 MB, for a machine without the
# zstd command: with 60 MiB pieces it travels on its own, not beside a piece). 6 pieces,
# 370 MB in all; 15 minutes on 2 cores (2026-11-26).
set -euo pipefail
out=${1:?usage: benchmarks/gpu/pack_offline_env.sh OUTPUT_DIR [PIECE]}
piece=${2:-62914560}
pip=${PIP:-python3 -m pip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/wheels" "$work/site"
out=$(CDPATH='' cd -- "$out" && pwd)  # the packing below runs in another folder

# What TensorFlow 2.21, Keras 3 and keras-hub 0.32 import, and google-crc32c (this
# project's data_format.py imports it; the GPU machine's image has the project's other
# needs: safetensors, sentencepiece, tensorboard), without the optional
# packages keras-hub only needs for tokenizers and downloads (tensorflow-text,
# sentencepiece, tokenizers, kagglehub, huggingface_hub, pillow) and without
# tensorboard, grpcio and libclang, which the benchmarks do not import.
cat >"$work/requirements.txt" <<'REQUIREMENTS'
tensorflow==2.21.0
keras==3.15.1
keras-hub==0.32.0
absl-py==2.5.1
astunparse==1.6.3
flatbuffers==25.12.19
gast==0.7.0
google-pasta==0.2.0
h5py==3.14.0
markdown-it-py==4.3.0
mdurl==0.1.2
ml_dtypes==0.6.0
namex==0.1.0
numpy==2.4.6
opt_einsum==3.4.0
optree==0.20.0
packaging==26.4
protobuf==7.36.2
Pygments==2.21.0
PyYAML==6.0.4
regex==2026.11.19
rich==15.0.0
six==1.17.0
termcolor==3.3.0
typing_extensions==4.16.0
wrapt==2.5.2
requests==2.34.2
urllib3==2.8.0
idna==3.20
certifi==2026.10.19.post1
charset-normalizer==3.5.3
zstandard==0.25.0
google-crc32c==1.8.0
nvidia-cuda-runtime-cu12==12.5.82
REQUIREMENTS
platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 \
    manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
    platforms+=(--platform "${tag}_x86_64")
done
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$work/wheels" -r "$work/requirements.txt" \
    "nvidia-cuda-nvcc-cu12==12.9.86"

cd "$work/site"
for wheel in "$work"/wheels/*.whl; do
    case $wheel in
    */nvidia_cuda_nvcc_cu12-*)  # ptxas and libdevice are all XLA needs of it
        unzip -q -o "$wheel" 'nvidia/cuda_nvcc/bin/ptxas' 'nvidia/cuda_nvcc/nvvm/libdevice/*' ;;
    *) unzip -q -o "$wheel" ;;
    esac
done
rm -rf tensorflow/include  # C++ headers: 431 MB nothing imports
find . -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$out/zstandard" && mkdir "$out/zstandard"  # its C backend is all that is needed
cp zstandard/__init__.py zstandard/backend_c.*.so "$out/zstandard/"
rm -f "$out"/part-*
tar -cf - . | zstd -q -19 -T0 --long=27 | split -b "$piece" -d - "$out/part-"
ls -l "$out"
