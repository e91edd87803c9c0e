"""Model loading (any HF causal LM through ``from_pretrained``) and tiny models built from code."""
