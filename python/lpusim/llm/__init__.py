"""Decoder LLMs: the KV-cache model contract, the onnxruntime reference decode, and (with torch and
transformers installed) Hugging Face exports with random weights. docs/llm.md."""
