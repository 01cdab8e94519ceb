"""Model runners: Hugging Face checkpoints loaded into native PyTorch transformers."""
