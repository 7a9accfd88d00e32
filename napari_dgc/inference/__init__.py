"""Inference with a trained model: tiled segmentation of whole cubes and checkpoint review."""
