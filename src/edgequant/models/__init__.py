"""Model files in and out: safetensors, registry-packaged models, HF <-> GGUF."""
