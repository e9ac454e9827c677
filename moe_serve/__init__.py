"""moe_serve: Mixture-of-Experts inference-serving experiments in JAX/Flax."""
