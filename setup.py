"""moe_serve: Mixture-of-Experts inference-serving experiments in JAX/Flax."""
import setuptools

setuptools.setup(
    name="moe_serve",
    version="0.1.0",
    description="Measure batch dependence, throughput and quality of served sparse MoE models.",
    packages=setuptools.find_packages(include=["moe_serve", "moe_serve.*", "configs"]),
    package_data={"moe_serve.data": ["eval_prompts.jsonl"]},  # the committed eval set
    python_requires=">=3.11",
    # Compatible ranges; constraints.txt pins the exact versions we test with.
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "numpy>=2.0",
        "tqdm>=4.66",
        "ml-dtypes>=0.5",  # bfloat16 for numpy (HF safetensors); jax depends on it too
        "safetensors>=0.5,<1",  # Hugging Face weights (moe_serve/hf)
        "tokenizers>=0.20,<1",  # Hugging Face tokenizer.json
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100"],
        "plots": ["matplotlib>=3.8"],
        "tensorboard": ["tensorboardX>=2.6"],
        # Peer benchmarks and the HF fixture builder (scripts/make_hf_fixtures.py); CPU torch.
        "peer": ["torch>=2.9", "transformers>=5"],
    },
)
