"""Helpers for testing against a real inference engine (tiny GGUF models, llama.cpp server)."""
