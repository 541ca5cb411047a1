"""Model cards, the model registry, safe weight loading and ImageNet base weights."""
