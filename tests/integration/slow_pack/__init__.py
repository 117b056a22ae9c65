"""A test pack: passes an image through after a pause, so a batch of tiny images runs long
enough to be killed or stopped mid-way without spending CPU on big images."""

from __future__ import annotations

import os
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


class ClientIdBridgeTest_Hold:
    """Holds each image for $CIB_TEST_HOLD_SECONDS (0 when unset): servers that differ only
    in that variable stand in for fast and slow GPUs running the same workflow."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "hold"
    CATEGORY = "clientid_bridge/tests"

    def hold(self, image: Any) -> tuple[Any]:
        time.sleep(float(os.environ.get("CIB_TEST_HOLD_SECONDS", "0")))
        return (image,)


class ClientIdBridgeTest_FailOn:
    """Passes the image through, or fails its prompt when `stem` is `fail_stem`: a workflow
    that breaks on one image of a batch."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "stem": ("STRING", {"forceInput": True}),
                "fail_stem": ("STRING", {"default": ""}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "check"
    CATEGORY = "clientid_bridge/tests"

    def check(self, image: Any, stem: str, fail_stem: str) -> tuple[Any]:
        if stem == fail_stem:
            raise RuntimeError(f"test failure on {stem}")
        return (image,)


NODE_CLASS_MAPPINGS = {
    "ClientIdBridgeTest_Pause": ClientIdBridgeTest_Pause,
    "ClientIdBridgeTest_Hold": ClientIdBridgeTest_Hold,
    "ClientIdBridgeTest_FailOn": ClientIdBridgeTest_FailOn,
}
