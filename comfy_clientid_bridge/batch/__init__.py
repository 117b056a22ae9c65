"""Torch-free helpers for processing a folder of images, one image per ComfyUI prompt."""
