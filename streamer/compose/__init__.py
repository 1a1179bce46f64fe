"""Compositing: pure functions of tensors that turn (image, alpha) into the output picture."""
