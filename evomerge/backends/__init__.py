"""Scoring backends: one interface (swap weights, log-likelihood of continuations). `hf.py` is Hugging Face
transformers on CPU or GPU; a vLLM backend follows the same shape."""
