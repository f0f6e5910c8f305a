"""Shared building blocks for the LoRA/QLoRA code-generation study scripts."""
