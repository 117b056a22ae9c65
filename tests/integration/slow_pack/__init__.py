"""A test pack: passes an image through after a pause, so a batch of tiny images runs long
enough to be killed or stopped mid-way without spending CPU on big images."""

from __future__ import annotations

import time
from typing import Any


class ClientIdBridgeTest_Pause:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "seconds": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 10.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "pause"
    CATEGORY = "clientid_bridge/tests"

    def pause(self, image: Any, seconds: float) -> tuple[Any]:
        time.sleep(seconds)
        return (image,)


NODE_CLASS_MAPPINGS = {"ClientIdBridgeTest_Pause": ClientIdBridgeTest_Pause}
