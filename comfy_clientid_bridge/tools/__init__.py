"""Tools outside ComfyUI: the terminal batch runner, the demo and the ComfyUI launcher."""
