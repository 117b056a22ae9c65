// comfy_clientid_bridge: live batch state on the nodes, a Stop button, and outputs that stay
// on their workflow. Only this tab's events reach it (core routes them by client_id).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "ClientIdBridge_";
const LOADER = PREFIX + "BatchImageLoader";
const NEXT = PREFIX + "BatchNext";

// The frontend keeps a prompt's outputs on its workflow only for prompts this tab queued
// (execution store, `queuedPrompts[id].workflow`, frontend 1.27). A re-queued iteration
// reaches this tab through the bridge without one: give it the workflow of the prompt that
// ran before it here, its parent in the loop.
// Checked in the shipped bundles (2026-11-28): 1.27.10 and 1.35.9 have the pinia store
// "execution" with `queuedPrompts` and the action `storePrompt({id, nodes, workflow})`, as
// used here. 1.58.1 renamed them `queuedJobs` and `storeJob({id, nodes, workflow, ...})`:
// there this code finds neither and steps aside (it threw a TypeError into the console on each
// execution_start before it checked), and the browser test's workflow-tab switch still passes
// on 1.58.1: that frontend keeps these outputs on their workflow without this code.
function executionStore() {
  const vueApp = document.querySelector("#vue-app")?.__vue_app__;
  return vueApp?.config.globalProperties.$pinia?._s.get("execution") ?? null;
}

let lastWorkflow = null;
const started = new Set();

function adoptWorkflow(promptId) {
  const store = executionStore();
  if (!store?.queuedPrompts || !promptId) return; // 1.58 has queuedJobs and needs no help
  started.add(promptId);
  if (started.size > 1000) started.delete(started.values().next().value);
  const queued = (store.queuedPrompts[promptId] ??= { nodes: {} });
  if (!queued.workflow && lastWorkflow) queued.workflow = lastWorkflow;
  lastWorkflow = queued.workflow ?? lastWorkflow;
}

// The frontend records a prompt it queued only once the POST answers, which can be after the
// prompt already started (a fast first image): take its workflow then, for its children.
function followQueuedPrompts() {
  const store = executionStore();
  store?.$onAction(({ name, args, after }) => {
    if (name !== "storePrompt") return;
    after(() => {
      if (!started.has(args[0]?.id) || !args[0].workflow) return;
      lastWorkflow = args[0].workflow;
      // Its re-queues may have started before this answer too: they are this tab's (their
      // events came here) and had no workflow to take yet.
      for (const id of started) {
        const queued = store.queuedPrompts?.[id];
        if (queued && !queued.workflow) queued.workflow = lastWorkflow;
      }
    });
  });
}

function loadersOf(batchId) {
  const nodes = app.graph?._nodes ?? [];
  const loaders = nodes.filter((node) => node.type === LOADER);
  const same = loaders.filter((node) => node.cibBatch === batchId);
  return same.length ? same : loaders;
}

function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add({ severity, summary, detail, life: 6000 });
}

async function stopBatch(node) {
  if (!node.cibBatch) {
    toast("warn", "No batch running", "Run the workflow first.");
    return;
  }
  const response = await api.fetchApi(`/clientid_bridge/batch/${node.cibBatch}/stop`, {
    method: "POST",
  });
  const body = await response.json();
  if (!response.ok) {
    toast("warn", "Batch not running", body.error ?? response.statusText);
    return;
  }
  node.cibBadge = `stopped: ${body.done}/${body.total}`;
  node.setDirtyCanvas(true, true);
  toast("info", "Batch stopped", body.progress);
}

function drawBadge(node, ctx) {
  if (!node.cibBadge || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  const width = ctx.measureText(node.cibBadge).width + 12;
  const x = node.size[0] - width - 6;
  const y = -LiteGraph.NODE_TITLE_HEIGHT + 5;
  ctx.fillStyle = node.cibBadge.startsWith("done") ? "#2e7d32" : "#1565c0";
  ctx.beginPath();
  ctx.roundRect(x, y, width, 20, 10);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.fillText(node.cibBadge, x + 6, y + 14);
  ctx.restore();
}

function drawText(node, ctx) {
  // The loader's state is its badge; the others show their last line of text.
  if (!node.cibText || node.flags?.collapsed || node.type === LOADER) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#ccc";
  ctx.fillText(node.cibText, 10, node.size[1] - 10, node.size[0] - 20);
  ctx.restore();
}

app.registerExtension({
  name: "comfy_clientid_bridge.batch",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith(PREFIX)) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (output?.text) this.cibText = output.text[0];
      if (output?.batch_id) this.cibBatch = output.batch_id[0];
      if (nodeData.name === LOADER && output?.badge) this.cibBadge = output.badge[0];
      if (nodeData.name === NEXT && output?.badge) {
        for (const loader of loadersOf(output.batch_id?.[0])) {
          loader.cibBadge = output.badge[0];
          loader.setDirtyCanvas(true, true);
        }
        if (output.state?.[0] === "done") toast("success", "Batch done", output.badge[0]);
        this.cibText = output.badge[0]; // the short state; the long summary is in the log
      }
      this.setDirtyCanvas(true, true);
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      drawBadge(this, ctx);
      drawText(this, ctx);
    };

    if (nodeData.name === LOADER) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
        const button = this.addWidget("button", "Stop batch", null, () => stopBatch(this));
        button.serialize = false; // not a setting: keep saved workflows' widget values as they are
      };
    }
  },

  setup() {
    followQueuedPrompts();
    api.addEventListener("execution_start", ({ detail }) => adoptWorkflow(detail?.prompt_id));
  },
});
