"""Sprout: efficient LLM pre-training with model growth, token selection and data mixtures."""
