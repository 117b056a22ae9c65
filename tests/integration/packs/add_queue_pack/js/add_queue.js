// Answers the events as the Impact Pack's js/common.js does (addQueue, nodeFeedbackHandler).
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

function addQueue(event) {
  app.queuePrompt(0, 1);
}

api.addEventListener("impact-add-queue", addQueue);

function nodeFeedbackHandler(event) {
  const node = app.graph.getNodeById(event.detail.node_id);
  const widget = node && node.widgets.find((w) => w.name === event.detail.widget_name);
  if (widget) {
    widget.value = event.detail.value;
  }
}

api.addEventListener("cib-add-queue-feedback", nodeFeedbackHandler);
