"""wam_jax: world-action models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="wam_jax",
    version="0.1.0",
    description="World-action models (video/inverse-dynamics/joint/hybrid WAMs) in JAX/Flax",
    packages=setuptools.find_packages(include=["wam_jax", "wam_jax.*", "experiments", "experiments.*"]),
    package_data={"wam_jax.data": ["registry/*.json"]},  # the built-in dataset registry files
    python_requires=">=3.10",
    # Known-good versions (2026-11, Python 3.11): jax 0.10.2, flax 0.12.8, optax 0.2.8,
    # orbax-checkpoint 0.12.8, grain 0.2.18, tensorflow-datasets 4.9.10, array-record 0.8.6.
    # Lower bounds are the APIs we use; upper bounds guard the fast-moving ones.
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",  # no TensorFlow: tfds parses examples with numpy.
        "array-record>=0.8",
        "chex>=0.1.90",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "pillow>=10",           # tfds image decoding without TF.
        "tensorboardX>=2.6",    # TensorBoard event files without TF.
        "imageio>=2.30",        # rollout GIFs.
        # Exported policies (wam_jax/export): jax.export serialization needs flatbuffers; the
        # policy server and its client speak msgpack over websockets (known-good: 25.12, 1.2.4, 17.4).
        "flatbuffers>=24",
        "msgpack>=1.0",
        "websockets>=15",
    ],
    extras_require={
        "sim": ["metaworld==3.1.1", "mujoco>=3.3,<3.4", "gymnasium>=1.0", "packaging"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "matplotlib>=3.7"], "report": ["matplotlib>=3.7"],  # ablation plots
        "torch": ["torch==2.13.0"],  # the CPU yardstick in scripts/bench_*.py only.
        "beam": ["apache-beam>=2.60"],  # scripts/convert_rlds.py --runner (conversion at scale).
        # The language model's trained subword tokenizer (wam_jax/data/text.py); known-good: 0.23.3.
        "lm": ["tokenizers>=0.21,<1"],
    },
)
