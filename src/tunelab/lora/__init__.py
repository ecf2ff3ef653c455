"""LoRA maths on format-free tensors: a LoRA is a set of (down, up, alpha) per module path."""
