"""A test pack with the `impact-add-queue` convention, as the Impact Pack's
"Queue Trigger (Countdown)" node and web extension have it.

The node (on ComfyUI's executor thread) sends a widget feedback and `impact-add-queue`
with no sid while `count < total - 1`; the web extension (js/) answers `impact-add-queue`
with `app.queuePrompt(0, 1)` and the feedback by setting the node's `count` widget, so the
next queued run has the next count and the loop stops after `total` runs.
"""

import server


class CIBAddQueueCountdown:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "count": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "total": ("INT", {"default": 3, "min": 1, "max": 10000}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ()
    FUNCTION = "countdown"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def countdown(self, count, total, unique_id):
        instance = server.PromptServer.instance
        more = count < total - 1
        feedback = {"node_id": unique_id, "widget_name": "count", "value": count + 1 if more else 0}
        instance.send_sync("cib-add-queue-feedback", feedback)
        if more:
            instance.send_sync("impact-add-queue", {})
        return {}


class CIBAddQueueMark:
    """An output node that does nothing: the other tab's idle workflow."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"marker": ("STRING", {"default": "idle"})}}

    RETURN_TYPES = ()
    FUNCTION = "mark"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def mark(self, marker):
        return {}


NODE_CLASS_MAPPINGS = {
    "CIBAddQueueCountdown": CIBAddQueueCountdown,
    "CIBAddQueueMark": CIBAddQueueMark,
}
WEB_DIRECTORY = "./js"
